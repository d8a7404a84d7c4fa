"""One document file's bytes to normalized Markdown-like text, whatever format it came in.

Every later stage (chunking, extraction, generation) reads only this text, so all formats end up
in the same shape: ATX headings (``#``), blank-line separated paragraphs, ``- item`` lists,
``term`` / ``: definition`` blocks and fenced code. A file that cannot be read raises
`DocumentError` with a short reason the user can act on; the caller lists it as skipped.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePath

# Deferred imports: pypdf is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

TEXT_FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html"}
FORMATS = {**TEXT_FORMATS, ".pdf": "pdf"}

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)?---[ \t]*(?:\n|\Z)", re.S)
_META_LINE = re.compile(r"^([A-Za-z_][\w-]*)[ \t]*:[ \t]*(.*?)[ \t]*$")


class DocumentError(ValueError):
    """A file that cannot be turned into text; the message says why in a few words."""


@dataclass
class ParsedDoc:
    title: str
    text: str
    format: str
    meta: dict[str, str] = field(default_factory=dict)


def parse_document(path: str, data: bytes) -> ParsedDoc:
    """Parse one file by its extension (case-insensitive) into a `ParsedDoc`."""
    p = PurePath(path)
    ext = p.suffix.lower()
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise DocumentError(f"unsupported file type '{ext}'" if ext else "unsupported file type (no extension)")
    if not data:
        raise DocumentError("empty file")
    if fmt == "pdf":
        title, text, meta = _parse_pdf(data)
    else:
        title, text, meta = _TEXT_PARSERS[fmt](_decode(data))
    text = normalize(text)
    if not text.strip():
        raise DocumentError("no text")
    return ParsedDoc(title=_one_line(title) or p.stem, text=text, format=fmt, meta=meta)


def normalize(text: str) -> str:
    """Unix newlines, no trailing spaces, at most two blank lines in a row: offsets stay stable downstream."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.lstrip("\n").rstrip() + "\n"


def headings(text: str) -> list[tuple[int, int, str]]:
    """(char offset, level, title) of each ATX heading, ignoring `#` lines inside fenced code."""
    out: list[tuple[int, int, str]] = []
    fence = ""
    offset = 0
    for line in text.split("\n"):
        fence = fence_state(line, fence)
        if not fence and not _FENCE.match(line):
            m = ATX_HEADING.match(line)
            if m and m.group(2):
                out.append((offset, len(m.group(1)), m.group(2).strip()))
        offset += len(line) + 1
    return out


def section_at(heads: list[tuple[int, int, str]], offset: int) -> str:
    """The heading path ("Title > Sub > Subsub") in force at a char offset: the context of a chunk."""
    path: list[tuple[int, str]] = []
    for start, level, title in heads:
        if start > offset:
            break
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, title))
    return " > ".join(title for _, title in path)


def fence_state(line: str, fence: str) -> str:
    """The open fence after `line`, given the one open before it ("" outside code). A fence closes only
    with a bare fence of its own character, at least as long: the CommonMark rule."""
    m = _FENCE.match(line)
    if not m:
        return fence
    marker = m.group(1)
    if not fence:
        return marker
    if marker[0] == fence[0] and len(marker) >= len(fence) and not line.strip().strip(marker[0]):
        return ""
    return fence


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _decode(data: bytes) -> str:
    """UTF-8 (BOM stripped), or UTF-16 only when a BOM says so: guessing other encodings garbles silently."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DocumentError(f"not valid UTF-16 (byte {e.start}: {e.reason})") from None
    if b"\x00" in data:
        raise DocumentError("binary content")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentError(f"not valid UTF-8 (byte {e.start}: {e.reason})") from None


# --- Markdown and plain text ---------------------------------------------------------------

def _parse_markdown(text: str) -> tuple[str, str, dict[str, str]]:
    """Front matter (simple `key: value` lines) goes to meta; title: meta, else the first `# ` heading."""
    text = text.replace("\r\n", "\n")
    meta: dict[str, str] = {}
    m = _FRONT_MATTER.match(text)
    if m:
        meta = _front_matter(m.group(1) or "")
        text = text[m.end():]
    title = meta.get("title", "")
    if not title:
        title = next((t for _, level, t in headings(text) if level == 1), "")
    return title, text, meta


def _front_matter(block: str) -> dict[str, str]:
    meta: dict[str, str] = {}
    for line in block.split("\n"):
        m = _META_LINE.match(line)
        if m:
            meta[m.group(1).lower()] = _scalar(m.group(2))
    return meta


def _scalar(value: str) -> str:
    """A YAML scalar as written in simple front matter: plain, 'single' or "double" (JSON escapes) quoted."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return value[1:-1]
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return value


def _parse_text(text: str) -> tuple[str, str, dict[str, str]]:
    """Plain text: a short first line standing alone above a blank line is the title."""
    lines = normalize(text).split("\n")
    title = lines[0] if len(lines) > 2 and len(lines[0]) < 100 and not lines[1].strip() else ""
    return title, text, {}


# --- HTML ------------------------------------------------------------------------------------

_SKIP = {"script", "style", "nav", "head", "title", "noscript", "template", "svg"}
_BLOCKS = {"p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "figure",
           "figcaption", "form", "hr", "table", "address", "details", "summary"}
_NESTED = {"li", "dt", "dd"}  # inside these, paragraph tags only separate words


class _HtmlToMarkdown(HTMLParser):
    """Collects blocks of Markdown-like text from HTML; the structure kept is what the extractors use."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.buf: list[str] = []
        self.prefix = ""
        self.attach = False  # the pending block continues the previous one on the next line
        self.kind = ""  # kind of the pending block: "li", "dt", "dd", "tr" or ""
        self.last = ""  # kind of the last emitted block
        self.code_at: int | None = None
        self.skip = 0
        self.pre: list[str] | None = None
        self.lists = 0
        self.nested: list[str] = []
        self.title: list[str] | None = None
        self.page_title = ""
        self.first_h1 = ""
        self.heading: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.title = []
        if tag == "body" and self.skip:
            self.skip = 0  # an unclosed <head>
        if tag in _SKIP:
            self.skip += 1
        if self.skip or self.pre is not None:
            return
        if tag == "pre":
            self._flush()
            self.pre = []
        elif re.fullmatch(r"h[1-6]", tag):
            self._start("#" * int(tag[1]) + " ", "")
            self.heading = [] if tag == "h1" else None
        elif tag in ("ul", "ol"):
            self._flush()
            self.lists += 1
            if self.lists == 1:
                self.last = ""
        elif tag == "li":
            self._start("  " * max(self.lists - 1, 0) + "- ", "li", attach=self.last == "li")
            self.nested.append(tag)
        elif tag == "dl":
            self._start("", "")
        elif tag == "dt":
            self._start("", "dt", attach=self.last == "dt")
            self.nested.append(tag)
        elif tag == "dd":
            self._start(": ", "dd", attach=self.last in ("dt", "dd"))
            self.nested.append(tag)
        elif tag == "tr":
            self._start("", "tr", attach=self.last == "tr")
        elif tag in ("td", "th"):
            if "".join(self.buf).strip():
                self.buf.append(" | ")
        elif tag == "br":
            self.buf.append("\n")
        elif tag == "code":
            self.code_at = len(self.buf)
        elif tag in _BLOCKS:
            if self.nested:
                self.buf.append(" ")
            else:
                self._start("", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self.title is not None:
            self.page_title = _one_line("".join(self.title))
            self.title = None
        if tag in _SKIP:
            self.skip = max(self.skip - 1, 0)
            return
        if self.skip:
            return
        if tag == "pre" and self.pre is not None:
            self._emit_pre("".join(self.pre))
            self.pre = None
        elif self.pre is not None:
            return
        elif re.fullmatch(r"h[1-6]", tag):
            if self.heading is not None and not self.first_h1:
                self.first_h1 = _one_line("".join(self.heading))
            self.heading = None
            self._flush()
        elif tag in ("ul", "ol"):
            self._flush()
            self.lists = max(self.lists - 1, 0)
            self.last = "li" if self.lists else ""
        elif tag in _NESTED:
            self._flush()
            if tag in self.nested:
                del self.nested[len(self.nested) - 1 - self.nested[::-1].index(tag):]
        elif tag in ("tr", "dl"):
            self._flush()
            if tag == "dl":
                self.last = ""
        elif tag == "code" and self.code_at is not None:
            self._close_code(self.code_at)
        elif tag in _BLOCKS and not self.nested:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.title is not None:
            self.title.append(data)
        if self.skip:
            return
        if self.pre is not None:
            self.pre.append(data)
            return
        self.buf.append(re.sub(r"\s+", " ", data))
        if self.heading is not None:
            self.heading.append(data)

    def close(self) -> None:
        super().close()
        if self.pre is not None:
            self._emit_pre("".join(self.pre))
        self._flush()

    def _start(self, prefix: str, kind: str, attach: bool = False) -> None:
        self._flush()
        self.prefix, self.attach, self.kind = prefix, attach, kind

    def _close_code(self, start: int) -> None:
        """Inline code becomes a Markdown code span, so `name(args)` terms stay recognizable."""
        inner = _one_line("".join(self.buf[start:]))
        del self.buf[start:]
        if inner:
            self.buf.append(f"`` {inner} ``" if "`" in inner else f"`{inner}`")
        self.code_at = None

    def _flush(self) -> None:
        if self.code_at is not None:
            self._close_code(self.code_at)
        lines = [_one_line(x) for x in "".join(self.buf).split("\n")]
        text = "\n".join(x for x in lines if x)
        if text:
            block = self.prefix + text
            if self.attach and self.blocks:
                self.blocks[-1] += "\n" + block
            else:
                self.blocks.append(block)
            self.last = self.kind
        self.buf, self.prefix, self.attach, self.kind = [], "", False, ""

    def _emit_pre(self, code: str) -> None:
        code = code[1:] if code.startswith("\n") else code
        code = code.rstrip("\n")
        if code.strip():
            fence = "`" * max(3, max((len(r) + 1 for r in re.findall(r"`{3,}", code)), default=3))
            self.blocks.append(f"{fence}\n{code}\n{fence}")
            self.last = ""


def _parse_html(text: str) -> tuple[str, str, dict[str, str]]:
    """HTML to Markdown-like text with the standard library parser: no dependency, no network."""
    parser = _HtmlToMarkdown()
    parser.feed(text)
    parser.close()
    return parser.page_title or parser.first_h1, "\n\n".join(parser.blocks), {}


# --- PDF ---------------------------------------------------------------------------------------

def _parse_pdf(data: bytes) -> tuple[str, str, dict[str, str]]:
    """Text of every page, in order; pypdf raises many error types on damaged files, all mean 'unreadable'."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError("unreadable PDF: encrypted, needs a password")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or ""
    except DocumentError:
        raise
    except Exception as e:  # noqa: BLE001 - any pypdf failure is the same fact for the user
        reason = str(e).strip() or type(e).__name__
        raise DocumentError(f"unreadable PDF: {reason[:200]}") from None
    return str(title), "\n\n".join(p.strip() for p in pages), {"pages": str(len(pages))}


_TEXT_PARSERS = {"markdown": _parse_markdown, "text": _parse_text, "html": _parse_html}
