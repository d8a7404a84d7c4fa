"""scripts/debian_faq.py: each FAQ layout parsed into question/answer pairs, the FAQ held out of its
manual, answers copied from the manual dropped, provenance recorded (on a .deb built here)."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))

import debian_faq  # noqa: E402

ANSWER = "Git stores the whole content of each file as a blob object and compresses similar objects into packs."
MANUAL = "The object database holds blobs, trees, commits and tags, each named by the hash of its content here."


def test_sqlite_layout():
    page = ('<ol><li><a name="q1"></a><p><b>(1) How do I create an AUTOINCREMENT field?</b></p>'
            '<blockquote>Short answer: A column declared <a href="x">INTEGER PRIMARY KEY</a> will autoincrement.'
            '</blockquote></li><li><a name="q2"></a><p><b>(2) What datatypes does SQLite support?</b></p>'
            '<blockquote>See the datatypes page.</blockquote></li></ol>')
    assert debian_faq.parse_sqlite(page) == [
        ("How do I create an AUTOINCREMENT field?", "Short answer: A column declared INTEGER PRIMARY KEY will autoincrement."),
        ("What datatypes does SQLite support?", "See the datatypes page.")]


def test_curl_layout_follows_the_table_of_contents():
    page = ("FAQ\n\n 1. Philosophy\n  1.1 What is cURL?\n  1.2 What is libcurl?\n\n" + "=" * 40 + "\n\n"
            "1. Philosophy\n\n  1.1 What is cURL?\n\n  cURL is the name of the project. The name is a play on\n"
            "  'Client for URLs'.\n  1.2 and more text that only looks like a heading\n\n"
            "  1.2 What is libcurl?\n\n  libcurl is a reliable and portable library for transfers.\n")
    got = debian_faq.parse_curl(page)
    assert [q for q, _ in got] == ["What is cURL?", "What is libcurl?"]
    assert "1.2 and more text" in got[0][1]


def test_keep_drops_pointers_and_short_answers():
    assert debian_faq.keep("Why?", ANSWER)
    assert not debian_faq.keep("Why?", "See limits.html for the details of it.")
    assert not debian_faq.keep("Why?", "Yes, SOCKS 4 and 5 are supported.")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian or Ubuntu)")
def test_build_holds_out_the_faq_and_drops_copied_answers(tmp_path):
    pkg = tmp_path / "pkg"
    doc = pkg / "usr/share/doc/git-doc"
    doc.mkdir(parents=True)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text("Package: git-doc\nVersion: 1:2.39-1\nArchitecture: all\n"
                                        "Maintainer: Nobody <nobody@example.org>\nDescription: test\n")
    (doc / "gitglossary.html").write_text(f"<html><body><h1>Glossary</h1><p>{MANUAL} {MANUAL}</p></body></html>")
    entries = [("How does Git store files?", ANSWER), ("What is in the object database?", MANUAL),
               ("Is it fast?", "Yes, it is.")]
    dl = "".join(f'<dt class="hdlist1">{q}</dt>\n<dd><p>{a}</p></dd>\n' for q, a in entries)
    (doc / "gitfaq.html").write_text(f"<html><body><h2>FAQ</h2><div class='dlist'><dl>{dl}</dl></div>"
                                     '<div id="footer">Last updated</div></body></html>')
    debs = tmp_path / "debs"
    debs.mkdir()
    deb = debs / "git-doc_2.39-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)], check=True, capture_output=True)
    out = tmp_path / "set"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/debian_faq.py"), str(out), "--packages", "git-doc",
                           "--debs", str(debs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert [(r["question"], r["answer"], r["topic"], r["origin"]) for r in rows] == [
        ("How does Git store files?", ANSWER, "git-doc", "human")]
    assert [p.name for p in (out / "corpus/git-doc").rglob("*.md")] == ["gitglossary.md"]
    assert (out / "held-out/git-doc/gitfaq.md").is_file()
    sources = json.loads((out / "SOURCES.json").read_text())
    pkg_info = sources["packages"][0]
    assert pkg_info["version"] == "1:2.39-1" and pkg_info["deb_sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert pkg_info["answer_sentences_in_corpus"] == 1
    assert sorted(d["reason"].split(" ")[0] for d in pkg_info["dropped"]) == ["1", "answer"]
    assert sources["questions_sha256"] == hashlib.sha256((out / "questions.jsonl").read_bytes()).hexdigest()
    # The test set reads as an evaluation test set.
    from app.eval.testset import read_jsonl

    frame = read_jsonl(out / "questions.jsonl")
    assert frame["origin"].tolist() == ["human-written"] and frame["example_id"].tolist() == ["git-doc-faq-001"]
    # A filled folder is refused.
    again = subprocess.run([sys.executable, str(ROOT / "scripts/debian_faq.py"), str(out), "--packages", "git-doc",
                            "--debs", str(debs)], capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "is not empty" in again.stderr
