from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from app.data.formats import DocumentError, ParsedDoc, headings, parse_document, section_at


def parse(path: Path, data: bytes | str) -> ParsedDoc:
    """Write a real file, then parse what is on disk, as the ingestion does."""
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return parse_document(str(path), path.read_bytes())


def tiny_pdf(text: str) -> bytes:
    """A minimal one-page PDF whose content stream shows `text` in Helvetica; xref offsets are exact."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def encrypted(pdf: bytes, tmp_path: Path, user: str, owner: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(_file(tmp_path / "plain.pdf", pdf)))
    writer.encrypt(user_password=user, owner_password=owner)
    out = tmp_path / "enc.pdf"
    with out.open("wb") as f:
        writer.write(f)
    return out.read_bytes()


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, data, message", [
    ("empty.md", b"", "empty file"),
    ("blob.txt", b"abc\x00\x01\x02def", "binary content"),
    ("latin1.md", "Café au lait\n".encode("latin-1"), "not valid UTF-8 (byte 3: invalid continuation byte)"),
    ("sheet.xyz", b"a,b\n", "unsupported file type '.xyz'"),
    ("Makefile", b"all:\n", "unsupported file type (no extension)"),
    ("blank.txt", b"  \n\n \t\n", "no text"),
    ("only-script.html", b"<html><script>alert(1)</script></html>", "no text"),
    ("front-only.md", b"---\ntitle: x\n---\n", "no text"),
    ("junk.pdf", b"%PDF-1.4 this is not a pdf", "unreadable PDF"),
])
def test_unreadable_files_say_why(tmp_path, name, data, message):
    with pytest.raises(DocumentError) as err:
        parse(tmp_path / name, data)
    assert str(err.value).startswith(message)
    assert isinstance(err.value, ValueError)


def test_encrypted_pdf_needs_password(tmp_path):
    data = encrypted(tiny_pdf("Secret text"), tmp_path, user="pw", owner="owner")
    with pytest.raises(DocumentError, match=r"^unreadable PDF: encrypted"):
        parse(tmp_path / "locked.pdf", data)


# --- decoding and normalization -----------------------------------------------------------------------

def test_utf8_bom_utf16_bom_and_extension_case(tmp_path):
    doc = parse(tmp_path / "a.TXT", "\ufeffHello there, world.\n".encode())
    assert doc.text == "Hello there, world.\n" and doc.format == "text"
    doc = parse(tmp_path / "b.txt", "Grüße aus Köln\n".encode("utf-16"))  # BOM first
    assert doc.text == "Grüße aus Köln\n"


def test_normalize_newlines_trailing_spaces_and_blank_runs(tmp_path):
    doc = parse(tmp_path / "n.md", b"\r\n\r\nline one   \r\nline two\t\r\n\r\n\r\n\r\n\r\n\r\nline three\r\n\r\n")
    assert doc.text == "line one\nline two\n\n\nline three\n"


# --- Markdown and text --------------------------------------------------------------------------------

def test_markdown_front_matter_goes_to_meta_and_title(tmp_path):
    front = '---\ntitle: "Serve — \\"quick\\" guide"\ntopic: serving\nOwner: \'ops\'\'s\'\n---\n'
    doc = parse(tmp_path / "guide.md", front + "# Heading\n\nBody text.\n")
    assert doc.title == 'Serve — "quick" guide'
    assert doc.meta == {"title": 'Serve — "quick" guide', "topic": "serving", "owner": "ops's"}
    assert doc.text == "# Heading\n\nBody text.\n" and doc.format == "markdown"


def test_markdown_title_from_first_h1_outside_code_else_stem(tmp_path):
    doc = parse(tmp_path / "notes.markdown", "```\n# not a title\n```\n\n## Sub\n\n# Real Title\n\nx y z\n")
    assert doc.title == "Real Title"
    assert parse(tmp_path / "my-notes.md", "Just text, no heading.\n").title == "my-notes"


@pytest.mark.parametrize("content, title", [
    ("Release notes\n\nEverything changed.\n", "Release notes"),
    ("Release notes\nEverything changed.\n", "readme"),  # no blank line after the first line
    ("x" * 120 + "\n\nbody\n", "readme"),  # too long for a title
])
def test_text_title(tmp_path, content, title):
    assert parse(tmp_path / "readme.txt", content).title == title


# --- HTML --------------------------------------------------------------------------------------------

HTML = """<!DOCTYPE html>
<html><head><title>Serve &amp; Scale</title><style>h1 { color: red }</style>
<script>document.write("<h1>injected</h1>");</script></head>
<body>
<nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
<h1>Ray Serve</h1>
<p>Serve   models with <b>Ray</b>&nbsp;&mdash; at scale.<br>Second line.</p>
<h3>Glossary</h3>
<dl>
  <dt><code>serve.run(target, *, name)</code></dt><dd>Deploys an application
  and returns a handle.</dd>
  <dt>Replica</dt><dd><p>One copy of a deployment.</p></dd>
</dl>
<ul><li>first item</li><li>second &lt;item&gt;</li></ul>
<pre><code>def f(x):
    return  x * 2
</code></pre>
<div>Done.</div>
</body></html>
"""


def test_html_structure_becomes_markdown(tmp_path):
    doc = parse(tmp_path / "serve.htm", HTML)
    assert doc.title == "Serve & Scale" and doc.format == "html"
    assert doc.text == (
        "# Ray Serve\n\n"
        "Serve models with Ray \u2014 at scale.\nSecond line.\n\n"  # nbsp is whitespace too
        "### Glossary\n\n"
        "`serve.run(target, *, name)`\n: Deploys an application and returns a handle.\n\n"
        "Replica\n: One copy of a deployment.\n\n"
        "- first item\n- second <item>\n\n"
        "```\ndef f(x):\n    return  x * 2\n```\n\n"
        "Done.\n"
    )
    assert "injected" not in doc.text and "Home" not in doc.text and "color" not in doc.text


def test_html_title_falls_back_to_first_h1(tmp_path):
    doc = parse(tmp_path / "page.html", "<body><h2>Intro</h2><h1>The  Title</h1><p>Text here.</p></body>")
    assert doc.title == "The Title"
    assert headings(doc.text) == [(0, 2, "Intro"), (10, 1, "The Title")]
    bare = parse(tmp_path / "bare.html", "<title>Only title</title><p>Body words.</p>")  # no <head>
    assert (bare.title, bare.text) == ("Only title", "Body words.\n")


# --- PDF ---------------------------------------------------------------------------------------------

def test_tiny_pdf_text_is_extracted(tmp_path):
    doc = parse(tmp_path / "report.PDF", tiny_pdf("Hello PDF world"))
    assert doc.format == "pdf" and doc.title == "report"
    assert doc.text == "Hello PDF world\n" and doc.meta == {"pages": "1"}


def test_pdf_with_only_an_owner_password_opens(tmp_path):
    doc = parse(tmp_path / "owner.pdf", encrypted(tiny_pdf("Readable anyway"), tmp_path, user="", owner="owner"))
    assert doc.text == "Readable anyway\n"


# --- headings ----------------------------------------------------------------------------------------

def test_headings_skip_fenced_code_and_give_section_paths():
    text = ("# Guide\n\nintro\n\n## Install\n\n```bash\n# a comment, not a heading\n~~~\n```\n\n"
            "### From source ###\n\nsteps\n\n#hashtag is not a heading\n\n## Use\n\n    # indented code\n")
    heads = headings(text)
    assert [(level, title) for _, level, title in heads] == [
        (1, "Guide"), (2, "Install"), (3, "From source"), (2, "Use"), ]
    assert all(text[offset:].startswith("#") for offset, _, _ in heads)
    assert section_at(heads, text.index("steps")) == "Guide > Install > From source"
    assert section_at(heads, text.index("indented")) == "Guide > Use"
    assert section_at(heads, text.index("intro")) == "Guide"
    assert section_at(heads, 0) == "Guide" and section_at([], 5) == ""


def test_tilde_fence_closes_only_with_tildes():
    text = "~~~~\n# inside\n```\n# still inside\n~~~~\n# outside\n"
    assert headings(text) == [(text.index("# outside"), 1, "outside")]
