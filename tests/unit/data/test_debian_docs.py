"""scripts/debian_docs.py on a real .deb built here with dpkg-deb: Markdown out, provenance recorded,
the FAQ held out, nothing overwritten."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian or Ubuntu)")


@pytest.fixture
def deb(tmp_path):
    pkg = tmp_path / "pkg"
    doc = pkg / "usr/share/doc/tool-doc"
    (doc / "howto").mkdir(parents=True)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text("Package: tool-doc\nVersion: 1:2.3-4\nArchitecture: all\n"
                                        "Maintainer: Nobody <nobody@example.org>\nDescription: test manual\n")
    body = " ".join(["The tool keeps every snapshot of the project in its object store."] * 4)
    (doc / "tool-commit.html").write_text(f"<html><head><title>tool-commit(1)</title></head><body><h2>DESCRIPTION</h2>"
                                          f"<p>{body}</p><pre>$ tool commit -m msg</pre></body></html>")
    (doc / "howto/recover.html").write_text(f"<html><body><h1>Recovering a lost commit</h1><p>{body}</p></body></html>")
    (doc / "toolfaq.html").write_text(f"<html><body><h2>Why is it slow?</h2><p>{body}</p></body></html>")
    (doc / "redirect.html").write_text("<html><body><p>Moved.</p></body></html>")
    out = tmp_path / "tool-doc_2.3-4_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(out)], check=True, capture_output=True)
    return out


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts/debian_docs.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_convert_records_provenance_and_holds_out_the_faq(deb, tmp_path):
    out = tmp_path / "corpus"
    proc = run("tool-doc", out, "--deb", deb, "--hold-out", "toolfaq.html")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.md")) == ["howto/recover.md", "tool-commit.md"]
    page = (out / "tool-commit.md").read_text()
    assert page.startswith('---\ntitle: "tool-commit(1)"\nsource: "tool-doc 1:2.3-4: /usr/share/doc/tool-doc/tool-commit.html"')
    assert "## DESCRIPTION" in page and "```\n$ tool commit -m msg\n```" in page
    source = json.loads((out / "SOURCE.json").read_text())
    assert source["package"] == "tool-doc" and source["version"] == "1:2.3-4"
    assert source["deb_sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert source["held_out_files"] == ["toolfaq.md"] and source["skipped"][0]["path"] == "redirect.html"
    assert {m["path"]: m["sha256"] for m in source["manifest"]}["tool-commit.md"] == \
        hashlib.sha256((out / "tool-commit.md").read_bytes()).hexdigest()
    held = tmp_path / "corpus.held-out"
    assert (held / "toolfaq.md").is_file() and not (out / "toolfaq.md").exists()

    # Converting again into the filled folder is refused; nothing there changes.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = run("tool-doc", out, "--deb", deb)
    assert again.returncode != 0 and "is not empty" in again.stderr
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # The same .deb gives the same bytes.
    other = tmp_path / "again"
    assert run("tool-doc", other, "--deb", deb).returncode == 0
    assert (other / "tool-commit.md").read_bytes() == (out / "tool-commit.md").read_bytes()


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
def test_man_pages_become_markdown(tmp_path):
    import gzip

    sys.path.insert(0, str(ROOT / "scripts"))
    import debian_docs

    roff = (".TH tool-run 1 \"2023\" \"tool 1.0\" \"Tool Manual\"\n.SH NAME\ntool-run \\- run the tool\n"
            ".SH DESCRIPTION\n" + "The tool runs every configured step in order and stops at the first failure.\n" * 3
            + ".SH OPTIONS\n.TP\n.B \\-v\nPrint each step before it runs.\n")
    page = tmp_path / "tool-run.1.gz"
    page.write_bytes(gzip.compress(roff.encode()))
    text = debian_docs.man_page_markdown(page)
    assert text.startswith("## NAME\n\ntool-run - run the tool\n\n## DESCRIPTION\n\nThe tool runs every configured step")
    assert "## OPTIONS" in text and "Print each step before it runs." in text
    assert "Tool Manual" not in text  # the page's header and footer lines are dropped
