"""Corpus ingestion: a folder of documents -> documents, token-aware chunks and extracted QA pairs.

The folder is listed on the driver (so unsupported files are reported, not silently dropped;
hidden files and folders are left out), then Ray Data reads and parses every file in parallel. One bad file never stops the
run: it comes back as a row with its reason, and the build lists it in its report.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from app.data.extract import extract_pairs
from app.data.formats import DocumentError, headings, parse_document, section_at
from app.datasets import pair_id

# Deferred imports: tokenizers is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


def list_documents(root: Path, extensions: list[str], max_docs: int | None,
                   exclude: tuple[str, ...] = ()) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(files to read, files skipped with the reason), both sorted by path relative to ``root``.

    Hidden files and folders are left out; ``exclude`` names top-level files that describe the folder
    rather than the domain (the embedded corpus's README and manifest)."""
    if not root.is_dir():
        raise FileNotFoundError(f"documents folder {root} does not exist or is not a folder")
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if name.startswith(".") or rel in exclude:
                continue
            if path.suffix.lower() not in extensions:
                skipped.append({"path": rel, "reason": f"unsupported file type {path.suffix or '(none)'!r}"})
            else:
                files.append({"path": str(path), "rel": rel})
    files.sort(key=lambda f: f["rel"])
    if max_docs is not None:
        files = files[:max_docs]
    return files, skipped


def doc_id_for(rel: str) -> str:
    """Stable document id: the path inside the corpus, hashed (content edits keep the id)."""
    return hashlib.sha256(rel.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def load_tokenizer(tokenizer_file: str) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_file)
    tok.no_truncation()
    tok.no_padding()
    return tok


_BREAK = re.compile(r"\n\s*\n|(?<=[.!?])\s")


def chunk_spans(text: str, offsets: list[tuple[int, int]], size: int, overlap: int, min_tokens: int) -> list[tuple[int, int, int]]:
    """Chunks as (char_start, char_end, n_tokens): windows of ``size`` tokens, ``overlap`` shared.

    A window ending mid-text is pulled back to the last paragraph or sentence break in its final
    quarter, so chunks rarely cut a sentence; a last window under ``min_tokens`` joins the previous.
    """
    n = len(offsets)
    if n == 0:
        return []
    spans: list[tuple[int, int]] = []  # token index ranges
    i = 0
    while i < n:
        end = min(i + size, n)
        if end < n:
            lo = i + (3 * size) // 4
            for j in range(end - 1, lo, -1):
                gap = text[offsets[j - 1][1]:offsets[j][0] + 1]
                if _BREAK.search(gap):
                    end = j
                    break
        spans.append((i, end))
        if end >= n:
            break
        i = max(end - overlap, i + 1)
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < min_tokens:
        last = spans.pop()
        spans[-1] = (spans[-1][0], last[1])
    return [(offsets[a][0], offsets[b - 1][1], b - a) for a, b in spans]


def structure_topic(rel: str, meta: dict[str, str]) -> str:
    """The document's own topic: front-matter ``topic``, else its top-level folder, else ''."""
    if meta.get("topic"):
        return meta["topic"].strip()
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else ""


def process_document(row: dict[str, Any], *, tokenizer_file: str, chunk_tokens: int, chunk_overlap: int,
                     min_chunk_tokens: int, extract_kinds: list[str]) -> dict[str, Any]:
    """Read, parse, chunk and extract one file. Errors become ``error``; this never raises."""
    rel = row["rel"]
    out: dict[str, Any] = {"doc_id": doc_id_for(rel), "doc_path": rel, "doc_title": "", "format": "",
                           "n_chars": 0, "n_tokens": 0, "topic": "", "error": "", "chunks": [], "extracted": []}
    try:
        data = Path(row["path"]).read_bytes()
        doc = parse_document(rel, data)
    except DocumentError as exc:
        out["error"] = str(exc)
        return out
    except OSError as exc:
        out["error"] = f"unreadable: {exc.strerror or exc}"
        return out
    try:
        return _chunk_and_extract(out, rel, doc, tokenizer_file=tokenizer_file, chunk_tokens=chunk_tokens,
                                  chunk_overlap=chunk_overlap, min_chunk_tokens=min_chunk_tokens,
                                  extract_kinds=extract_kinds)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the corpus; it is reported
        out.update(error=f"failed to process: {type(exc).__name__}: {exc}"[:300], chunks=[], extracted=[])
        return out


def _chunk_and_extract(out: dict[str, Any], rel: str, doc: Any, *, tokenizer_file: str, chunk_tokens: int,
                       chunk_overlap: int, min_chunk_tokens: int, extract_kinds: list[str]) -> dict[str, Any]:
    text = doc.text
    enc = load_tokenizer(tokenizer_file).encode(text, add_special_tokens=False)
    heads = headings(text)
    out.update(doc_title=doc.title, format=doc.format, n_chars=len(text), n_tokens=len(enc.ids),
               topic=structure_topic(rel, doc.meta))
    spans = chunk_spans(text, enc.offsets, chunk_tokens, chunk_overlap, min_chunk_tokens)
    chunks = []
    for k, (s, e, n_tok) in enumerate(spans):
        chunks.append({"chunk_id": f"{out['doc_id']}-{k:04d}", "doc_id": out["doc_id"], "doc_path": rel,
                       "doc_title": doc.title, "section": section_at(heads, s) or doc.title, "text": text[s:e],
                       "start": s, "end": e, "n_tokens": n_tok, "topic": out["topic"]})
    out["chunks"] = chunks
    if chunks and extract_kinds:
        out["extracted"] = [_extracted_row(p, chunks, doc.title, heads) for p in extract_pairs(text, doc.title, extract_kinds)]
    return out


def _extracted_row(p: Any, chunks: list[dict[str, Any]], title: str, heads: Any) -> dict[str, Any]:
    """An extracted pair attached to the chunk holding its evidence (else the one overlapping it most)."""
    holder = next((c for c in chunks if c["start"] <= p.start and p.end <= c["end"]), None)
    if holder is None:
        holder = max(chunks, key=lambda c: min(c["end"], p.end) - max(c["start"], p.start))
    return {"pair_id": pair_id(p.kind, holder["doc_id"], p.question), "question": p.question, "answer": p.answer,
            "evidence": p.evidence, "generator": p.kind, "origin": f"extracted:{p.kind}", "doc_id": holder["doc_id"],
            "doc_path": holder["doc_path"], "doc_title": title, "section": section_at(heads, p.start) or title,
            "chunk_id": holder["chunk_id"], "context": holder["text"], "topic": holder["topic"]}
