import hashlib
import json
from pathlib import Path

import pytest

from app.data import corpus
from app.data.corpus import MANIFEST, ensure_default_corpus, export_stdlib_docs, python_version
from app.data.extract import extract_pairs
from app.data.formats import parse_document

MODULES = ["json", "bisect", "textwrap"]
TOPICS = ["assignment", "augassign", "string-methods"]


def export(dest: Path) -> dict:
    return export_stdlib_docs(dest, progress=lambda _: None, modules=MODULES, topics=TOPICS)


def read(path: Path):
    return parse_document(str(path), path.read_bytes())


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("stdlib") / "docs"
    return dest, export(dest)


def test_layout_and_manifest(exported):
    dest, manifest = exported
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == sorted([
        "MANIFEST.json", "README.md", "language/assignment.md", "language/string-methods.md",
        "library/data-persistence-and-formats/json.md", "library/data-types/bisect.md",
        "library/text-processing/textwrap.md",
    ])
    assert manifest == json.loads((dest / MANIFEST).read_text())
    assert manifest["python"] == python_version() and "generated" not in json.dumps(manifest)
    assert manifest["topic_aliases"] == {"augassign": "assignment"}  # its text is a section of "assignment"
    for entry in manifest["files"]:
        data = (dest / entry["path"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    totals = manifest["totals"]
    assert totals["files"] == 6 and totals["language_topics"] == 2 and totals["library_modules"] == 3
    assert totals["definitions"] > 30


def test_front_matter_and_titles(exported):
    dest, _ = exported
    doc = read(dest / "library/data-persistence-and-formats/json.md")
    assert doc.title == "json — JSON encoder and decoder"
    assert doc.meta["topic"] == "data-persistence-and-formats" and doc.meta["module"] == "json"
    assert doc.meta["source"] == f"docstrings of json (Python {python_version()})"
    assert doc.text.startswith("# json — JSON encoder and decoder\n\nJSON (JavaScript Object Notation)")
    topic = read(dest / "language/assignment.md")
    assert topic.title == "Assignment statements"
    assert topic.meta["topic"] == "language-reference" and topic.meta["label"] == "assignment"
    assert topic.meta["source"] == f"pydoc_data.topics (Python {python_version()})"
    assert "\n## Augmented assignment statements\n" in topic.text and "*****" not in topic.text


def test_definition_entries(exported):
    dest, _ = exported
    text = read(dest / "library/data-persistence-and-formats/json.md").text
    assert "\n## Functions\n\n`json.dump(obj, fp, *, skipkeys=False," in text
    assert "`json.dumps(obj, *, skipkeys=False" in text
    assert "\n: Serialize ``obj`` to a JSON formatted ``str``.\n" in text
    assert "\n### json.JSONDecoder\n\n`class json.JSONDecoder(*, object_hook=None," in text
    assert "\n`json.JSONDecoder.decode(s)`\n: Return the Python representation" in text  # `_w=` is private
    assert "\n`exception json.JSONDecodeError(msg, doc, pos)`\n: Subclass of ValueError" in text
    assert "__init__" not in text and "_one_shot" not in text and " at 0x" not in text
    # bisect's functions live in the C module _bisect: still its own API.
    assert "`bisect.bisect_left(a, x, lo=0, hi=None, *, key=None)`\n: Return the index" in \
        read(dest / "library/data-types/bisect.md").text
    methods = read(dest / "language/string-methods.md").text
    assert "\n`str.capitalize()`\n: Return a copy of the string with its first character capitalized\n" in methods


def test_extracted_definitions_are_exact_slices(exported):
    dest, _ = exported
    for path in [dest / "library/data-persistence-and-formats/json.md", dest / "language/string-methods.md"]:
        doc = read(path)
        pairs = extract_pairs(doc.text, doc.title)
        assert pairs and "definition" in {p.kind for p in pairs} and {p.kind for p in pairs} <= {"definition", "statement"}
        for p in pairs:
            assert doc.text[p.start:p.end] == p.evidence
            assert " ".join(p.answer.split()) in " ".join(p.evidence.split())
    questions = {p.question: p.answer for p in extract_pairs(read(dest / "library/data-persistence-and-formats/"
                                                                     "json.md").text)}
    assert questions["What does `json.dumps()` do?"] == "Serialize ``obj`` to a JSON formatted ``str``."
    assert "What is the `json.JSONEncoder` class for?" in questions
    assert "What is the `json.JSONDecodeError` exception for?" in questions


def test_export_is_deterministic(exported, tmp_path):
    first, manifest = exported
    second = export(tmp_path / "again")
    assert second == manifest
    assert (tmp_path / "again" / MANIFEST).read_bytes() == (first / MANIFEST).read_bytes()


def test_refuses_unknown_names_and_non_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="not in the curated list: nosuchmodule, topic nosuchtopic"):
        export_stdlib_docs(tmp_path / "a", modules=["nosuchmodule"], topics=["nosuchtopic"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_stdlib_docs(tmp_path / "b", modules=["json"], topics=[])


def test_module_that_fails_to_import_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(corpus.CHAPTER_OF, "no_such_module_for_tests", "runtime")
    monkeypatch.setitem(corpus.LIBRARY, "runtime", {**corpus.LIBRARY["runtime"], "no_such_module_for_tests": "x"})
    manifest = export_stdlib_docs(tmp_path / "d", progress=lambda _: None,
                                  modules=["json", "no_such_module_for_tests"], topics=[])
    assert list(manifest["skipped"]) == ["no_such_module_for_tests"]
    assert [f["path"] for f in manifest["files"]] == ["README.md", "library/data-persistence-and-formats/json.md"]


def test_ensure_default_corpus_exports_once_and_repairs(tmp_path, monkeypatch):
    calls = []

    def small_export(dest, progress):
        calls.append(dest)
        return export_stdlib_docs(dest, progress, modules=["json"], topics=["pass"])

    monkeypatch.setattr(corpus, "export_stdlib_docs", small_export)
    messages: list[str] = []
    path = ensure_default_corpus(tmp_path, messages.append)
    assert path == tmp_path / "corpus" / f"python-stdlib-{python_version()}"
    assert (path / "library/data-persistence-and-formats/json.md").is_file() and len(calls) == 1
    assert messages and [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary folder left

    assert ensure_default_corpus(tmp_path, messages.append) == path and len(calls) == 1  # reused

    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, "python": "0.0.0"}))
    assert ensure_default_corpus(tmp_path, messages.append) == path and len(calls) == 2  # re-exported
    assert json.loads((path / MANIFEST).read_text())["python"] == python_version()
    assert [p.name for p in path.parent.iterdir()] == [path.name]
