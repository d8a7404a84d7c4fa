"""The embedded default knowledge base: the Python standard library's own reference text.

Every machine that runs the app has it offline, so a dataset can be built before a team points the
app at its own documents. It is exported once into a folder of Markdown files that a person can
read and that the ingestion reads like any team's folder:

* ``language/<label>.md``: the Language Reference topics shipped in ``pydoc_data.topics``;
* ``library/<chapter>/<module>.md``: the docstrings of ~70 well-known modules, one definition-list
  entry per public function, class, method and documented object;
* ``README.md`` and ``MANIFEST.json`` (files with sizes and hashes, no timestamp).

The same Python always gives byte-identical files: names are sorted, memory addresses are cut
from reprs, nothing depends on the clock or the environment's settings.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

# Deferred imports: pydoc_data is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

MANIFEST = "MANIFEST.json"
LANGUAGE_TOPIC = "language-reference"

# Chapters of the Library Reference, each module with its title there.
LIBRARY: dict[str, dict[str, str]] = {
    "text-processing": {
        "string": "Common string operations", "re": "Regular expression operations",
        "textwrap": "Text wrapping and filling", "difflib": "Helpers for computing deltas",
        "unicodedata": "Unicode Database",
    },
    "data-types": {
        "datetime": "Basic date and time types", "calendar": "General calendar-related functions",
        "collections": "Container datatypes", "heapq": "Heap queue algorithm",
        "bisect": "Array bisection algorithm", "array": "Efficient arrays of numeric values",
        "enum": "Support for enumerations", "copy": "Shallow and deep copy operations",
        "pprint": "Data pretty printer",
    },
    "numeric-and-math": {
        "math": "Mathematical functions", "cmath": "Mathematical functions for complex numbers",
        "decimal": "Decimal fixed point and floating point arithmetic", "fractions": "Rational numbers",
        "random": "Generate pseudo-random numbers", "statistics": "Mathematical statistics functions",
        "numbers": "Numeric abstract base classes",
    },
    "functional": {
        "itertools": "Functions creating iterators for efficient looping",
        "functools": "Higher-order functions and operations on callable objects",
        "operator": "Standard operators as functions",
    },
    "files-and-directories": {
        "pathlib": "Object-oriented filesystem paths", "os.path": "Common pathname manipulations",
        "shutil": "High-level file operations", "glob": "Unix style pathname pattern expansion",
        "fnmatch": "Unix filename pattern matching", "tempfile": "Generate temporary files and directories",
        "filecmp": "File and directory comparisons",
    },
    "data-persistence-and-formats": {
        "pickle": "Python object serialization", "shelve": "Python object persistence",
        "sqlite3": "DB-API 2.0 interface for SQLite databases", "csv": "CSV file reading and writing",
        "json": "JSON encoder and decoder", "configparser": "Configuration file parser",
        "zlib": "Compression compatible with gzip", "gzip": "Support for gzip files",
        "zipfile": "Work with ZIP archives", "tarfile": "Read and write tar archive files",
        "base64": "Base16, Base32, Base64, Base85 data encodings",
    },
    "os-services": {
        "os": "Miscellaneous operating system interfaces", "io": "Core tools for working with streams",
        "time": "Time access and conversions",
        "argparse": "Parser for command-line options, arguments and sub-commands",
        "logging": "Logging facility for Python", "platform": "Access to underlying platform's identifying data",
    },
    "concurrency": {
        "threading": "Thread-based parallelism", "multiprocessing": "Process-based parallelism",
        "subprocess": "Subprocess management", "queue": "A synchronized queue class", "sched": "Event scheduler",
        "contextvars": "Context variables", "concurrent.futures": "Launching parallel tasks",
    },
    "internet": {
        "urllib.parse": "Parse URLs into components", "http.client": "HTTP protocol client",
        "email.message": "Representing an email message", "html": "HyperText Markup Language support",
        "ipaddress": "IPv4/IPv6 manipulation library",
    },
    "development": {
        "typing": "Support for type hints", "unittest": "Unit testing framework",
        "doctest": "Test interactive Python examples", "timeit": "Measure execution time of small code snippets",
    },
    "runtime": {
        "sys": "System-specific parameters and functions", "dataclasses": "Data classes",
        "contextlib": "Utilities for with-statement contexts", "abc": "Abstract base classes",
        "inspect": "Inspect live objects", "warnings": "Warning control",
    },
}
CHAPTER_OF = {module: chapter for chapter, modules in LIBRARY.items() for module in modules}

# Section underlines of Sphinx's text writer, by level.
_UNDERLINES = {"*": 1, "=": 2, "-": 3, "~": 4, '"': 5, "+": 6}
# A directive's signature line in the topic text: `str.capitalize()`, `class dict(**kwargs)`, `object.__slots__`.
_TOPIC_SIGNATURE = re.compile(
    r"^(?:(?:class|exception|classmethod|staticmethod|abstractmethod|async|awaitable)\s+)?"
    r"[A-Za-z_]\w*(?:\.\w+)+(?:\(.*\))?(?:\s*->\s*\S.*)?$"
    r"|^(?:class|exception)\s+[A-Za-z_][\w.]*(?:\(.*\))?$"
)
# Docstrings that say nothing: slot-wrapper and namedtuple boilerplate.
_BOILERPLATE = re.compile(
    r"^(?:Initialize self\..*|Create and return a new object\..*|.*See help\(type(?:\(self\))?\) for accurate"
    r" signature\.|Alias for field number \d+|An enumeration\.|Return self[^.]*\.|Helper for pickle\."
    r"|Implement \w+\(self.*\)\.?|Method generated by attrs.*)$"
)
# Old C docstrings start with "int, int -> ", the argument types: the signature's job, not prose.
_ARROW_PREFIX = re.compile(r"^[\w ,\[\]*=.']{1,40}? -+> (?=\S)")
_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|exc|const|obj|term|ref|pep|rfc|envvar|keyword)"
                   r":`~?([^`]+)`")
_COVERED = 0.9  # share of a topic's paragraphs found in another topic that makes it a duplicate
_SIMPLE_YAML = re.compile(r"[A-Za-z0-9][\w .,()/+-]*")


def export_stdlib_docs(dest: Path, progress: Callable[[str], None] = print, modules: Iterable[str] | None = None,
                       topics: Iterable[str] | None = None) -> dict:
    """Write the stdlib docs into the empty or missing folder `dest`; returns the manifest written.

    `modules` (names from `LIBRARY`) and `topics` (labels of ``pydoc_data.topics``) pick a subset;
    None means all. Modules that fail to import are listed in the manifest's ``skipped`` and left out.
    """
    from pydoc_data.topics import topics as all_topics

    started = time.perf_counter()
    version = python_version()
    names = list(CHAPTER_OF) if modules is None else list(modules)
    unknown = [n for n in names if n not in CHAPTER_OF]
    labels = sorted(all_topics) if topics is None else sorted(topics)
    unknown += [f"topic {t}" for t in labels if t not in all_topics]
    if unknown:
        raise ValueError(f"not in the curated list: {', '.join(unknown)}")
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; export into a new folder")
    progress(f"exporting the Python {version} standard library docs to {dest}")

    files: dict[str, str] = {}
    definitions = 0
    kept, aliases = _distinct_topics(labels, all_topics)
    for label in kept:
        files[f"language/{label}.md"], n = _topic_page(label, all_topics[label], version)
        definitions += n
    skipped: dict[str, str] = {}
    for name in sorted(names):
        try:
            module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a missing optional C extension is not our failure
            skipped[name] = f"{type(e).__name__}: {e}"
            continue
        files[f"library/{CHAPTER_OF[name]}/{name}.md"], n = _module_page(name, module, version)
        definitions += n
    files["README.md"] = _readme(version, sorted(set(names) - set(skipped)), len(kept))

    manifest = _write(dest, files, version, definitions, aliases, skipped)
    t = manifest["totals"]
    progress(f"wrote {t['files']} files ({t['chars']:,} characters, {t['definitions']:,} definitions) "
             f"in {time.perf_counter() - started:.1f}s" + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    return manifest


def ensure_default_corpus(home: Path, progress: Callable[[str], None] = print) -> Path:
    """The exported docs of the running Python under `home`/corpus, exported on first use.

    The export goes to a temporary sibling and is renamed into place, so a crash never leaves a
    half-written corpus that a later run would take for complete.
    """
    version = python_version()
    target = home / "corpus" / f"python-stdlib-{version}"
    if _manifest_version(target) == version:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    export_stdlib_docs(tmp, progress)
    if _manifest_version(target) == version:  # another process finished the same export meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    if target.exists():
        stale = target.parent / f".{target.name}.stale-{os.getpid()}"
        target.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        # Another process finished the same export first; its copy is as good as ours.
        shutil.rmtree(tmp, ignore_errors=True)
        if _manifest_version(target) != version:
            raise
    return target


def python_version() -> str:
    v = sys.version_info
    return f"{v.major}.{v.minor}.{v.micro}"


def _manifest_version(folder: Path) -> str | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("python")
    except (OSError, ValueError, AttributeError):
        return None


def _write(dest: Path, files: dict[str, str], version: str, definitions: int, aliases: dict[str, str],
           skipped: dict[str, str]) -> dict:
    entries = []
    for rel in sorted(files):
        data = files[rel].encode("utf-8")
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append({"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {
        "python": version,
        "generator": "app.data.corpus.export_stdlib_docs",
        "files": entries,
        "topic_aliases": aliases,
        "skipped": skipped,
        "totals": {
            "files": len(entries),
            "bytes": sum(e["bytes"] for e in entries),
            "chars": sum(len(t) for t in files.values()),
            "definitions": definitions,
            "language_topics": sum(r.startswith("language/") for r in files),
            "library_modules": sum(r.startswith("library/") for r in files),
        },
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _front_matter(**fields: str) -> str:
    """YAML front matter; values quoted (JSON strings are valid YAML) unless plainly safe."""
    lines = [f"{k}: {v if _SIMPLE_YAML.fullmatch(v) else json.dumps(v, ensure_ascii=False)}"
             for k, v in fields.items()]
    return "---\n" + "\n".join(lines) + "\n---\n\n"


def _readme(version: str, modules: list[str], n_topics: int) -> str:
    chapters = "\n".join(
        f"- `{chapter}`: " + ", ".join(f"`{m}`" for m in mods if m in modules)
        for chapter, mods in LIBRARY.items() if any(m in modules for m in mods)
    )
    return f"""# Python {version} standard library documentation

This folder is the app's default knowledge base: the reference text of the Python standard
library, taken from the Python that runs the app, so it is available offline on every machine.
Point `data.docs_dir` at your team's own documents to build a dataset from those instead.

It was generated by `app.data.corpus.export_stdlib_docs` and is regenerated only when the Python
version changes. Every page is plain Markdown with a front-matter block (`title`, `topic`, `source`).

- `language/`: {n_topics} topics of the Language Reference (statements, expressions, data model),
  from `pydoc_data.topics`, the text behind `help("if")`. Section underlines became `#` headings;
  code examples stay indented as in the original.
- `library/<chapter>/<module>.md`: the docstrings of {len(modules)} modules read with `inspect`.
  Each public function, class, method and documented object is one definition-list entry: the
  signature on one line, then `: ` and the first paragraph of its docstring.

{chapters}

`MANIFEST.json` lists every file with its size and SHA-256; the same Python writes the same bytes.
"""


# --- language topics -------------------------------------------------------------------------------

def _distinct_topics(labels: list[str], all_topics: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Labels to export and {label: label whose file holds its text}.

    pydoc files some sections twice: under their own label and inside their parent's text ("for"
    inside "compound", "else" identical to "if"). A duplicated passage in two documents would leak
    between dataset splits, so a topic whose paragraphs mostly appear in a larger kept one is left
    out as an alias of it. Of identical texts, the label the title names is kept.
    """
    paragraphs = {lb: _long_paragraphs(all_topics[lb]) for lb in labels}

    def order(lb: str) -> tuple[int, bool, str]:
        title = _topic_title(all_topics[lb], lb).lower()
        return -len(all_topics[lb]), f'"{lb}"' not in title and lb not in title, lb

    kept: list[str] = []
    aliases: dict[str, str] = {}
    for label in sorted(labels, key=order):
        own = paragraphs[label]
        home = next((k for k in kept if own and len(own & paragraphs[k]) >= _COVERED * len(own)), None)
        if home:
            aliases[label] = home
        else:
            kept.append(label)
    return sorted(kept), dict(sorted(aliases.items()))


def _long_paragraphs(text: str) -> set[str]:
    return {p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 80}


def _topic_title(text: str, label: str) -> str:
    """The topic's own first section title ("Augmented assignment statements"); else the label, prettified."""
    lines = text.split("\n")
    if len(lines) > 1 and _underline_level(lines[0], lines[1]):
        return lines[0].strip()
    return label.replace("-", " ").capitalize()


def _topic_page(label: str, text: str, version: str) -> tuple[str, int]:
    title = _topic_title(text, label)
    body, definitions = _topic_markdown(text)
    head = _front_matter(title=title, topic=LANGUAGE_TOPIC, source=f"pydoc_data.topics (Python {version})",
                         label=label)
    return head + body.strip("\n") + "\n", definitions


def _underline_level(line: str, under: str) -> int:
    """Level of a Sphinx text-writer section title `line` underlined by `under`, 0 when it is not one."""
    if not line.strip() or line[0].isspace() or not under or under[0] not in _UNDERLINES:
        return 0
    if under != under[0] * len(under) or len(under) < len(line.rstrip()):
        return 0
    return _UNDERLINES[under[0]]


def _topic_markdown(text: str) -> tuple[str, int]:
    """Underlined titles become `#` headings; a directive's signature line with its indented
    description becomes a `signature` / `: description` entry. Returns the text and the entry count."""
    lines = text.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    definitions = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        level = _underline_level(line, lines[i + 1]) if i + 1 < len(lines) else 0
        if level:
            out.append("#" * level + " " + line.strip())
            i += 2
            continue
        if _is_topic_signature(lines, i):
            j = i + 2
            para = []
            while j < len(lines) and lines[j].startswith("   ") and lines[j].strip():
                para.append(lines[j][3:])
                j += 1
            out.append(_code_span(line.strip()))
            out.append(": " + para[0].strip())
            out.extend("  " + p.strip() for p in para[1:])
            definitions += 1
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out), definitions


def _is_topic_signature(lines: list[str], i: int) -> bool:
    """A lone unindented signature line, then a blank line, then a paragraph indented three spaces."""
    if i + 2 >= len(lines) or (i > 0 and lines[i - 1].strip()) or lines[i + 1].strip():
        return False
    body = lines[i + 2]
    return bool(_TOPIC_SIGNATURE.match(lines[i])) and body.startswith("   ") and not body.startswith("    ") \
        and bool(body.strip())


# --- library modules ----------------------------------------------------------------------------------

def _module_page(name: str, module: Any, version: str) -> tuple[str, int]:
    """The module's page: title, docstring, then one definition entry per documented public object."""
    title = f"{name} — {LIBRARY[CHAPTER_OF[name]][name]}"
    functions: list[str] = []
    classes: list[list[str]] = []
    exceptions: list[list[str]] = []
    data: list[str] = []
    for attr, obj in _public_members(module):
        qual = f"{name}.{attr}"
        if inspect.isclass(obj):
            block = _class_block(qual, obj)
            if block:
                (exceptions if issubclass(obj, BaseException) else classes).append(block)
        elif inspect.isroutine(obj):
            functions += _entries(qual, _signature(obj), _own_doc(obj), attr, routine=True)
        else:
            doc = obj.__doc__ if isinstance(obj.__doc__, str) and obj.__doc__ != type(obj).__doc__ else ""
            data += _entries(qual, None, doc, attr, routine=False)
    parts = [f"# {title}", _escape_block(_unrole(inspect.cleandoc(module.__doc__ or "")))]
    if functions:
        parts += ["## Functions", *functions]
    for heading, blocks in (("Classes", classes), ("Exceptions", exceptions)):
        if blocks:
            parts += [f"## {heading}", *(part for block in blocks for part in block)]
    if data:
        parts += ["## Data", *data]
    head = _front_matter(title=title, topic=CHAPTER_OF[name], source=f"docstrings of {name} (Python {version})",
                         module=name)
    return head + "\n\n".join(p for p in parts if p) + "\n", sum("\n: " in p for p in parts)


def _public_members(module: Any) -> list[tuple[str, Any]]:
    """(name, object) of the module's public API: the names in `__all__` when defined (what the author
    declared, as pydoc does), else names without a leading underscore whose object was defined in the
    module, its C twin (`_bisect` for `bisect`) or a submodule. Private names, re-exported builtins and
    second names of one object are dropped."""
    declared = getattr(module, "__all__", None)
    names = sorted(set(declared) if declared is not None else vars(module))
    own = (module.__name__, "_" + module.__name__)
    found: dict[int, tuple[str, Any]] = {}
    for name in names:
        obj = getattr(module, name, None)
        if name.startswith("_") or obj is None or inspect.ismodule(obj):
            continue
        where = getattr(obj, "__module__", None) if inspect.isclass(obj) or inspect.isroutine(obj) else None
        if where == "builtins" and module.__name__ != "builtins":
            continue
        if declared is None and (inspect.isclass(obj) or inspect.isroutine(obj)):
            if not (where in own or (where or "").startswith(module.__name__ + ".")):
                continue
        previous = found.get(id(obj))
        if previous is None or getattr(obj, "__name__", None) == name:
            found[id(obj)] = (name, obj)
    return sorted(found.values(), key=lambda item: item[0])


def _class_block(qual: str, cls: type) -> list[str]:
    """A '### class' heading, the class's own entry, then its documented public methods and properties
    defined on the class itself; empty when nothing in it is documented."""
    members = []
    for attr in sorted(vars(cls)):
        member = None if attr.startswith("_") else _class_member(cls, attr)
        if member is not None:
            signature, doc, routine = member
            members += _entries(f"{qual}.{attr}", signature, doc, attr, routine)
    doc_signature, description = _describe(_own_doc(cls), cls.__name__)
    signature = _signature(cls)
    if signature in (None, "(*args, **kwargs)"):
        signature = doc_signature
    kind = "exception" if issubclass(cls, BaseException) else "class"
    term = _code_span(f"{kind} {qual}{signature or ''}")
    if description:
        return [f"### {qual}", f"{term}\n: {description}", *members]
    # Undocumented class with documented methods: its signature alone, for the reader.
    return [f"### {qual}", term, *members] if members else []


def _class_member(cls: type, attr: str) -> tuple[str | None, str, bool] | None:
    """(signature, own docstring, is a routine) of a method or property defined on `cls`, else None."""
    raw = vars(cls)[attr]
    if isinstance(raw, property) or inspect.isgetsetdescriptor(raw) or inspect.ismemberdescriptor(raw):
        return None, raw.__doc__ or "", False
    bound = getattr(cls, attr, None)
    if not inspect.isroutine(bound):
        return None
    if isinstance(raw, staticmethod):
        return _signature(raw.__func__), _own_doc(raw.__func__), True
    if inspect.ismethod(bound) or type(raw).__name__ == "classmethod_descriptor":
        return _signature(bound), _own_doc(bound), True  # bound to the class: `cls` is already gone
    return _signature(raw, drop_first=True), _own_doc(raw), True


def _entries(qual: str, signature: str | None, doc: str, name: str, routine: bool) -> list[str]:
    """The definition-list entry of one object (`name(signature)` / `: description`); none if undocumented."""
    doc_signature, description = _describe(doc, name)
    if not description:
        return []
    if routine and signature is None:
        signature = doc_signature or "(...)"
    return [f"{_code_span(qual + (signature or ''))}\n: {description}"]


def _own_doc(obj: Any) -> str:
    """The object's own docstring: not one inherited from a base class or from `type`."""
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) else ""


def _describe(doc: str, name: str) -> tuple[str | None, str]:
    """(signature written in the docstring, first real paragraph whitespace-collapsed).

    Old C docstrings open with their signature ("date(year, month, day) --> date object", "D.count(value)
    -- return ..."); it is taken as the signature, and a docstring that is nothing else counts as
    undocumented.
    """
    lines = inspect.cleandoc(doc).split("\n")
    signature = None
    pattern = re.compile(rf"^\s*(?:[\w.]+\.)?{re.escape(name)}(\(.*\))\s*(?:-+>.*)?$")
    while lines and (pattern.match(lines[0]) or not lines[0].strip() or (signature and lines[0][0].isspace())):
        m = pattern.match(lines[0])  # (an indented line continues the signature's return annotation)
        signature = signature or (m.group(1) if m else None)
        lines.pop(0)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", _unrole("\n".join(lines))) if p.strip()]
    first = paragraphs[0] if paragraphs else ""
    if first.endswith(":") and len(paragraphs) > 1:
        first += " " + paragraphs[1]  # "... the following properties:" means nothing without them
    inline = re.match(rf"^(?:[\w.]+\.)?{re.escape(name)}(\(.*?\))\s+--\s+", first)  # "D.count(value) -- ..."
    if inline:
        signature = signature or inline.group(1)
    prefix = inline or _ARROW_PREFIX.match(first)
    if prefix:
        first = first[prefix.end():prefix.end() + 1].upper() + first[prefix.end() + 1:]
    return signature, "" if _BOILERPLATE.match(first) else first


def _signature(obj: Any, drop_first: bool = False) -> str | None:
    """`(a, b=1)` from inspect; None when there is none. Memory addresses and this interpreter's path
    (a default of `platform.architecture`) are cut from default reprs: they differ between runs."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())[1 if drop_first else 0:]
    # `_w=<built-in method match ...>`: private parameters are implementation detail, not API.
    sig = sig.replace(parameters=[p for p in params if not p.name.startswith("_") or p.default is p.empty])
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(sig)).replace(repr(sys.executable), "sys.executable")
    return " ".join(text.split())


def _unrole(text: str) -> str:
    """Sphinx roles (:mod:`json`, :func:`~os.path.join`) to Markdown code spans."""
    return _ROLE.sub(r"`\1`", text)


def _code_span(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _escape_block(text: str) -> str:
    """Docstring text set into Markdown: a line that would read as a heading, fence, definition or
    Q/A marker gets a backslash, so the readers of the corpus see prose where the author wrote prose."""
    return re.sub(r"(?m)^(?=#|```|~~~|: |(?:Q|A|Question|Answer):)", r"\\", text)
