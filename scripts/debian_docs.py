#!/usr/bin/env python3
"""Download a Debian documentation package and convert its HTML manual to a folder of Markdown.

A real manual that no one on this project wrote, to point `data.docs_dir` at:

    python scripts/debian_docs.py git-doc ~/corpora/git-doc
    app run -c configs/local.yaml --set data.docs_dir=~/corpora/git-doc --set data.name=git-doc-qa

The package is fetched with `apt-get download` (Debian's mirrors; nothing from a model hub) or taken
from `--deb FILE`, unpacked with `dpkg-deb -x` (never installed), and every HTML page under
/usr/share/doc is turned into Markdown by the project's own converter (app.data.formats, the same
one the dataset stage uses), written with a front matter that names its source. `SOURCE.json`
records the package, its version, the .deb's sha256 and each file's sha256, so a run can say what
it was built from; the same .deb always gives the same bytes.

`--hold-out PATTERN` (a glob on the page's path, repeatable) writes matching pages to
`<out>.held-out/` instead: a human-written FAQ kept out of the corpus to test on later.
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.data.formats import DocumentError, parse_document  # noqa: E402

# Tested packages and what they hold (Debian 12, bookworm).
KNOWN = {
    "git-doc": "Git's manual: user manual, tutorials, how-tos and one page per command (gitfaq: 17 FAQ entries)",
    "sqlite3-doc": "SQLite's documentation site (faq.html: 27 FAQ entries)",
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(package: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["apt-get", "download", package], cwd=into, capture_output=True, text=True)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if done.returncode != 0 or not debs:
        sys.exit(f"error: apt-get download {package} failed ({done.stderr.strip()[-300:] or 'no .deb written'}); "
                 "pass the file with --deb FILE instead")
    return debs[-1]


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], check=True, capture_output=True, text=True).stdout.strip()


def front_matter(**fields: str) -> str:
    return "---\n" + "".join(f"{k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in fields.items()) + "---\n\n"


def doc_root(unpacked: Path, package: str, doc_dir: str | None = None) -> Path:
    """/usr/share/doc/<doc_dir or package> of an unpacked .deb, or /usr/share/doc when there is no such folder."""
    root = unpacked / "usr" / "share" / "doc"
    return root / (doc_dir or package) if (root / (doc_dir or package)).is_dir() else root


TEXT_SUFFIXES = (".md", ".txt", ".rst")


def _page_bytes(page: Path) -> tuple[str, bytes] | None:
    """(name to parse it as, bytes) of an HTML page or a text document (possibly gzipped); None otherwise."""
    name, data = page.name, None
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix.lower()
    if suffix in (".html", ".htm") and not page.name.endswith(".gz"):
        return name, page.read_bytes()
    if suffix in TEXT_SUFFIXES or (suffix == "" and name.isupper()):  # README, KNOWN_BUGS, TODO
        data = page.read_bytes()
        if page.name.endswith(".gz"):
            data = gzip.decompress(data)
        return (name if suffix else name + ".txt"), data
    return None


def man_page_markdown(page: Path) -> str | None:
    """A man page rendered by groff (plain text, wide lines, no hyphenation) as Markdown: section
    headings as `##`, indented paragraphs joined; None when groff is missing or renders nothing."""
    if shutil.which("groff") is None:
        return None
    data = gzip.decompress(page.read_bytes()) if page.name.endswith(".gz") else page.read_bytes()
    done = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou", "-rLL=300n", "-rHY=0", "-dAD=l"], input=data,
                          capture_output=True)
    lines = done.stdout.decode("utf-8", errors="replace").splitlines()
    filled = [k for k, line in enumerate(lines) if line.strip()]
    if len(filled) < 3:
        return None
    out, para = [], []

    def flush() -> None:
        if para:
            out.append(" ".join(" ".join(para).split()))
            para.clear()

    for line in lines[filled[0] + 1:filled[-1]]:  # without the page's header and footer lines
        if not line.strip():
            flush()
        elif not line.startswith(" "):
            flush()
            out.append(f"## {line.strip()}")
        else:
            para.append(line.strip())
    flush()
    text = "\n\n".join(out)
    return text if len(text.split()) >= 30 else None


def convert(deb: Path, out: Path, hold_out: list[str], include: list[str] | None = None, text_docs: bool = False,
            held_out_to: Path | None = None, doc_dir: str | None = None) -> dict:
    """Every HTML page under /usr/share/doc (and, with ``text_docs``, Markdown and plain-text documents)
    as Markdown under ``out``; pages matching ``hold_out`` go to ``held_out_to`` (default
    ``<out>.held-out``), and with ``include`` only pages matching one of its globs are converted. Globs
    match paths under /usr/share/doc/<doc_dir> (default: the package's name)."""
    package, version = deb_field(deb, "Package"), deb_field(deb, "Version")
    held = held_out_to or out.with_name(out.name + ".held-out")
    for folder in (out, held):
        if folder.exists() and any(folder.iterdir()):
            sys.exit(f"error: {folder} is not empty; convert into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    files, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        root = Path(tmp) / "usr" / "share" / "doc"
        base = doc_root(Path(tmp), package, doc_dir)
        pages = []
        for p in sorted(root.rglob("*")):
            got = _page_bytes(p) if p.is_file() and not p.is_symlink() else None
            if got and (text_docs or got[0].lower().endswith((".html", ".htm"))):
                pages.append((p, *got))
        if not pages and not text_docs:
            sys.exit(f"error: {deb.name} has no HTML pages under /usr/share/doc")
        for page, name, data in pages:
            rel = page.relative_to(base if page.is_relative_to(base) else root).as_posix()
            if include and not any(fnmatch.fnmatch(rel, pat) for pat in include):
                continue
            if page.name in ("copyright", "changelog.gz", "changelog.Debian.gz", "NEWS.Debian.gz"):
                continue
            try:
                doc = parse_document(str(Path(rel).with_name(name)), data)
            except DocumentError as exc:
                skipped.append({"path": rel, "reason": str(exc)})
                continue
            if len(doc.text.split()) < 30:  # redirects and empty index pages
                skipped.append({"path": rel, "reason": f"only {len(doc.text.split())} words"})
                continue
            target_root = held if any(fnmatch.fnmatch(rel, pat) for pat in hold_out) else out
            dest = target_root / Path(rel).with_name(Path(name).stem + ".md")
            dest.parent.mkdir(parents=True, exist_ok=True)
            text = front_matter(title=doc.title, source=f"{package} {version}: /usr/share/doc/{package}/{rel}") + doc.text + "\n"
            dest.write_text(text, encoding="utf-8")
            data = dest.read_bytes()
            files.append({"path": dest.relative_to(target_root).as_posix(), "held_out": target_root == held,
                          "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        if text_docs:  # man pages too (section 1 and 3 are the command and the API reference)
            for page in sorted((Path(tmp) / "usr" / "share" / "man").glob("man[1-8]/*")):
                if not page.is_file() or page.is_symlink():
                    continue
                rel = f"man/{page.name.removesuffix('.gz')}"
                text = man_page_markdown(page)
                if text is None:
                    skipped.append({"path": rel, "reason": "groff rendered under 30 words (or is missing)"})
                    continue
                target_root = held if any(fnmatch.fnmatch(rel, pat) for pat in hold_out) else out
                dest = target_root / f"{rel}.md"
                dest.parent.mkdir(parents=True, exist_ok=True)
                title = page.name.removesuffix(".gz")
                dest.write_text(front_matter(title=title, source=f"{package} {version}: /usr/share/man/"
                                             f"{page.parent.name}/{page.name}") + f"# {title}\n\n{text}\n",
                                encoding="utf-8")
                data = dest.read_bytes()
                files.append({"path": dest.relative_to(target_root).as_posix(), "held_out": target_root == held,
                              "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if not files:
        sys.exit(f"error: {deb.name} has no page to convert under /usr/share/doc" + (" or /usr/share/man" if text_docs else ""))
    kept = [f for f in files if not f["held_out"]]
    source = {"package": package, "version": version, "deb": deb.name, "deb_sha256": sha256(deb),
              "converter": "app.data.formats.parse_document", "hold_out": hold_out,
              "files": len(kept), "bytes": sum(f["bytes"] for f in kept),
              "held_out_files": [f["path"] for f in files if f["held_out"]], "skipped": skipped,
              "manifest": [{k: f[k] for k in ("path", "bytes", "sha256")} for f in kept]}
    (out / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    if any(f["held_out"] for f in files):
        (held / "SOURCE.json").write_text(json.dumps({**source, "manifest": [
            {k: f[k] for k in ("path", "bytes", "sha256")} for f in files if f["held_out"]]}, indent=2) + "\n")
    return source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", help="Debian package, e.g. " + ", ".join(KNOWN))
    ap.add_argument("out", type=Path, help="folder to write the Markdown into (new or empty)")
    ap.add_argument("--deb", type=Path, help="use this .deb instead of downloading it")
    ap.add_argument("--hold-out", action="append", default=[], metavar="GLOB",
                    help="pages to keep out of the corpus (written to OUT.held-out/), e.g. gitfaq.html")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "debian-docs",
                    help="where downloaded .deb files are kept")
    args = ap.parse_args()
    if shutil.which("dpkg-deb") is None:
        sys.exit("error: dpkg-deb not found: this script needs a Debian or Ubuntu machine")
    deb = args.deb or download(args.package, args.cache)
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    src = convert(deb, out, args.hold_out)
    print(f"{src['package']} {src['version']} (sha256 {src['deb_sha256'][:16]}...): {src['files']} pages, "
          f"{src['bytes'] / 1e6:.1f} MB of Markdown in {out}; {len(src['held_out_files'])} held out, "
          f"{len(src['skipped'])} skipped")


if __name__ == "__main__":
    main()
