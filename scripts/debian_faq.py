#!/usr/bin/env python3
"""A human-written test set: the FAQs of Debian documentation packages, held out of their manuals.

    python scripts/debian_faq.py ~/corpora/debian-faq
    # -> ~/corpora/debian-faq/corpus/<package>/...   the manuals without their FAQ (Markdown)
    #    ~/corpora/debian-faq/questions.jsonl        the FAQ entries: question, answer, topic=<package>
    #    ~/corpora/debian-faq/SOURCES.json           versions, .deb sha256, counts, the leak check
    app dataset build -c configs/local.yaml --set data.docs_dir=~/corpora/debian-faq/corpus --set data.name=debian-qa
    app eval run -c configs/local.yaml --set data.name=debian-qa \\
        --set evaluation.test_set=~/corpora/debian-faq/questions.jsonl \\
        --set evaluation.retrieval.corpus_dir=~/corpora/debian-faq/corpus --set evaluation.max_new_tokens=192

Every package is fetched with `apt-get download` (or taken from `--debs DIR`), unpacked with
`dpkg-deb -x` and converted by scripts/debian_docs.py; the FAQ page is written to a held-out
folder, never to the corpus. Its entries are parsed into question/answer pairs (one parser per
package: the FAQs have five different layouts) and kept when the answer has at least 8 words and
is more than a pointer ("See limits.html."). Then every answer sentence of 8 words or more is
looked up, word for word (case and spacing ignored), in the package's corpus: a FAQ that copies
its manual would test recall of the training text, not answering. Those counts go to SOURCES.json
and every entry with such a sentence is dropped: no kept answer has a sentence in the corpus.

The questions were written by the projects' maintainers and users for people, not for this test.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import re
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import debian_docs  # noqa: E402

MIN_WORDS = 8


class _Text(HTMLParser):
    """Visible text of an HTML fragment, block elements separated by spaces."""

    SKIP = {"script", "style", "head", "title"}
    BLOCK = {"p", "div", "br", "li", "dt", "dd", "pre", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6",
             "blockquote", "ul", "ol", "dl", "table", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.out.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def ws(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def text_of(fragment: str) -> str:
    p = _Text()
    p.feed(fragment)
    p.close()
    return ws("".join(p.out))


def read(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


# -- one parser per FAQ layout: (question, answer) in page order ---------------------------------------


def parse_sqlite(page: str) -> list[tuple[str, str]]:
    out = []
    for part in re.split(r'<a name="q\d+"></a>', page)[1:]:
        part = re.split(r'</ol>|<div class="footer"|</body>', part)[0]
        m = re.match(r'\s*<p><b>\(\d+\)\s*(.*?)</b></p>(.*)', part, re.S)
        if m:
            out.append((text_of(m.group(1)), text_of(m.group(2))))
    return out


def parse_gitfaq(page: str) -> list[tuple[str, str]]:
    page = page.split('<div id="footer">')[0]
    found = re.findall(r'<dt class="hdlist1">(.*?)</dt>\s*<dd>(.*?)</dd>\s*(?=<dt class="hdlist1">|</dl>)', page, re.S)
    return [(text_of(q), text_of(a)) for q, a in found]


def parse_curl(page: str) -> list[tuple[str, str]]:
    """curl's plain-text FAQ: numbered entries, matched against its own table of contents in order,
    number and wording (a wrapped line starting '4.12 and ...' is not a heading; a few headings are
    worded a little differently from their contents line)."""
    toc, body = page.split("=" * 30, 1)
    numbers = re.findall(r"^ +(\d+(?:\.\d+)+) ", toc, re.M)
    titles = dict(re.findall(r"^ +(\d+(?:\.\d+)+) (.+)$", toc, re.M))
    entries: list[list] = []
    current, i = None, 0
    for line in body.splitlines():
        m = re.match(r"^ +(\d+(?:\.\d+)+) (.+)$", line)
        if i < len(numbers) and m and m.group(1) == numbers[i] and _same_title(m.group(2), titles[numbers[i]]):
            number, title = numbers[i], m.group(2).strip()
            i += 1
            parent = number.rsplit(".", 1)[0]
            if number.count(".") >= 2 and parent in titles:  # 4.5.1 "400 Bad Request" under 4.5
                title = titles[parent].rstrip("?") + ": " + title
            current = [title, []]
            entries.append(current)
        elif re.match(r"^\d+\. \S", line):  # a chapter heading
            current = None
        elif current is not None:
            current[1].append(line)
    return [(q, "\n".join(a)) for q, a in entries]


def _same_title(a: str, b: str) -> bool:
    from difflib import SequenceMatcher

    return SequenceMatcher(None, ws(a).lower(), ws(b).lower()).ratio() >= 0.6


def parse_zsh(pages: list[str]) -> list[tuple[str, str]]:
    out = []
    for page in pages:
        body = max(re.split(r'<hr>\s*<ul>\s*<li> <a href="FAQ\.html">', page), key=len)  # between the nav bars
        for m in re.finditer(r"<h2 >(.*?)</h2>(.*?)(?=<h2 |<h1 |$)", body, re.S):
            out.append((re.sub(r"^\s*\d+\.\d+:\s*", "", text_of(m.group(1))), text_of(m.group(2))))
    return out


def parse_apache_ssl(page: str) -> list[tuple[str, str]]:
    page = page.split('<div class="bottomlang">')[0]
    page = re.sub(r'<div class="top">.*?</div>', "", page, flags=re.S)
    found = re.findall(r'<h3 id="[^"]+">(.*?)</h3>(.*?)(?=<h3 |<h2 |</div>\s*<div class="section">|$)', page, re.S)
    return [(text_of(q), text_of(a)) for q, a in found]


# package -> where its manual lives (/usr/share/doc/<doc_dir>, default the package's name), the FAQ's
# files (globs there), its parser, what of the rest is the manual (include globs; default every page)
# whether Markdown/plain-text documents and man pages count as pages (curl's manual is Markdown and
# man pages), and other packages whose documentation belongs to the same manual.
PACKAGES = {
    "git-doc": {"faq": ["gitfaq.html", "gitfaq.txt"], "parse": parse_gitfaq},
    "sqlite3-doc": {"doc_dir": "sqlite3", "faq": ["faq.html"], "parse": parse_sqlite},
    "libcurl4-doc": {"doc_dir": "libcurl4", "faq": ["FAQ.gz"], "parse": parse_curl, "text_docs": True,
                     "with": ["curl"]},  # curl(1), the command's manual, is in the curl package
    "zsh-doc": {"doc_dir": "zsh-common", "faq": ["html/FAQ*.html", "html/The-Zsh-FAQ.html"], "parse": parse_zsh},
    "apache2-doc": {"faq": ["manual/en/ssl/ssl_faq.html"], "parse": parse_apache_ssl, "include": ["manual/en/*"]},
}


def keep(question: str, answer: str) -> bool:
    words = len(re.sub(r"(?:https?|ftp)://\S+", "", answer).split())
    if re.match(r"(see|read|look at)\b", answer, re.I) and words < 15:  # a pointer, not an answer
        return False
    return bool(question) and words >= MIN_WORDS


def sentences(answer: str) -> list[str]:
    return [s for s in (ws(x).lower().rstrip(".") for x in re.split(r"(?<=[.!?])\s+", answer))
            if len(s.split()) >= MIN_WORDS]


def corpus_text(folder: Path) -> str:
    return ws(" ".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.rglob("*.md")))).lower()


def build(package: str, deb: Path, out: Path) -> dict:
    spec = PACKAGES[package]
    corpus, held = out / "corpus" / package, out / "held-out" / package
    source = debian_docs.convert(deb, corpus, spec["faq"], include=spec.get("include"),
                                 text_docs=spec.get("text_docs", False), held_out_to=held, doc_dir=spec.get("doc_dir"))
    for extra in spec.get("with", []):
        found = sorted(deb.parent.glob(f"{extra}_*.deb"))
        extra_deb = found[-1] if found else debian_docs.download(extra, deb.parent)
        more = debian_docs.convert(extra_deb, corpus / extra, [], text_docs=True, held_out_to=held / extra)
        source.setdefault("with", []).append({k: more[k] for k in ("package", "version", "deb", "deb_sha256", "files",
                                                                   "bytes")})
        source["files"] += more["files"]
        source["bytes"] += more["bytes"]
    with tempfile.TemporaryDirectory() as tmp:  # the FAQ in its original layout, for its parser
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        root = debian_docs.doc_root(Path(tmp), package, spec.get("doc_dir"))
        pages = sorted(p for pat in spec["faq"] for p in root.glob(pat) if p.is_file())
        if not pages:
            sys.exit(f"error: {deb.name} has no FAQ at {spec['faq']}")
        raw = [read(p) for p in pages if not p.name.endswith(".txt")]
        entries = spec["parse"](raw) if spec["parse"] is parse_zsh else [e for r in raw for e in spec["parse"](r)]
    text = corpus_text(corpus)
    rows, dropped, n_sent, n_copied = [], [], 0, 0
    for n, (q, a) in enumerate(entries, 1):
        q, a = ws(html.unescape(q)), ws(html.unescape(a))
        if not keep(q, a):
            dropped.append({"question": q, "reason": "answer under 8 words or only a pointer"})
            continue
        sents = sentences(a)
        copied = sum(s in text for s in sents)
        n_sent, n_copied = n_sent + len(sents), n_copied + copied
        if copied:
            dropped.append({"question": q, "reason": f"{copied} of {len(sents)} answer sentences are in the corpus"})
            continue
        rows.append({"id": f"{package}-faq-{n:03d}", "question": q, "answer": a, "topic": package, "origin": "human",
                     "source": f"{package} {source['version']}: {', '.join(spec['faq'])}"})
    return {"package": package, "version": source["version"], "deb": source["deb"], "deb_sha256": source["deb_sha256"],
            "faq_files": source["held_out_files"], "corpus_pages": source["files"], "corpus_bytes": source["bytes"],
            "with_packages": source.get("with", []),
            "questions": len(rows), "dropped": dropped, "answer_sentences": n_sent,
            "answer_sentences_in_corpus": n_copied, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to write corpus/, held-out/, questions.jsonl and SOURCES.json into")
    ap.add_argument("--packages", nargs="+", default=list(PACKAGES), choices=list(PACKAGES), metavar="PKG",
                    help=f"packages to pool (default: all of {', '.join(PACKAGES)})")
    ap.add_argument("--debs", type=Path, help="folder with the .deb files (default: apt-get download into --cache)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "debian-docs")
    args = ap.parse_args()
    out = args.out.expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} is not empty; write the test set into a new folder")
    results = []
    for package in args.packages:
        found = sorted(args.debs.glob(f"{package}_*.deb")) if args.debs else []
        deb = found[-1] if found else debian_docs.download(package, args.cache)
        r = build(package, deb, out)
        results.append(r)
        print(f"{package} {r['version']}: {r['questions']} questions ({len(r['dropped'])} dropped), "
              f"{r['answer_sentences_in_corpus']}/{r['answer_sentences']} answer sentences found in the corpus, their entries dropped "
              f"({r['corpus_pages']} pages, {r['corpus_bytes'] / 1e6:.1f} MB)")
    rows = [row for r in results for row in r.pop("rows")]
    (out / "questions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    digest = hashlib.sha256((out / "questions.jsonl").read_bytes()).hexdigest()
    (out / "SOURCES.json").write_text(json.dumps({"questions": len(rows), "questions_sha256": digest,
                                                  "packages": results}, indent=2) + "\n")
    print(f"{len(rows)} human-written questions from {len(results)} packages -> {out / 'questions.jsonl'} "
          f"(sha256 {digest[:16]}...)")


if __name__ == "__main__":
    main()
