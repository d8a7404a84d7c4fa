"""The dataset handoff: where builds live, which is the latest, and the record every stage passes on.

The record is: one QA pair with its source, as a flat dict (a Ray Data row).

Keys (all strings unless noted):
    pair_id        stable id: hash of (generator, doc_id, original question), so it survives rebuilds and
                   edits elsewhere in the document (chunk numbers shift; the document id is its path)
    question, answer
    evidence       the passage of the source chunk that supports the answer ("" when the generator gave none)
    generator      "llm" (the model wrote question and answer) | "llm_question" (the model wrote the question
                   of an answer sentence taken from the chunk) | an extraction kind (app.data.extract.KINDS)
    origin         free text: the model id for llm pairs, the extraction rule otherwise
    doc_id, doc_path, doc_title, section   the source document and the heading path inside it
    chunk_id, context   the source chunk (context = its text, what the model sees at training time)
    topic          the stratification label
Quality columns added by app.data.quality: score_* floats, accepted (bool), reject_reason.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from app.data.config import EXTRACT_KINDS
from app.errors import AppError

if TYPE_CHECKING:  # annotations only: the config composes the stages' sections, this module sits under them
    from app.config import ExperimentConfig


class DatasetError(AppError, RuntimeError):
    """The dataset cannot be built as configured; the message says what to change."""


# Every generator: the model's two, and the kinds of pairs taken from the documents by rule.
GENERATORS = ("llm", "llm_question", *EXTRACT_KINDS)
PAIR_KEYS = ("pair_id", "question", "answer", "evidence", "generator", "origin", "doc_id", "doc_path", "doc_title",
             "section", "chunk_id", "context", "topic")


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace and strip punctuation at the ends: the key of exact duplicates."""
    return re.sub(r"\s+", " ", text.lower()).strip(" \t\n.?!:;,")


def pair_id(generator: str, scope: str, question: str) -> str:
    """Id of a pair: its generator, the document (or chunk, for per-chunk error rows) and question."""
    key = f"{generator}\x1f{scope}\x1f{normalize_text(question)}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def datasets_root(cfg: ExperimentConfig) -> Path:
    return cfg.paths.resolved_home() / "datasets" / cfg.data.name


def latest_dataset(cfg: ExperimentConfig) -> Path:
    """Folder of the last successful build of the configured dataset."""
    pointer = datasets_root(cfg) / "LATEST"
    if not pointer.is_file():
        raise DatasetError(f"no build of dataset {cfg.data.name!r} under {datasets_root(cfg)}: run `app dataset build`")
    return datasets_root(cfg) / pointer.read_text().strip()


def origin_of(origin: str) -> str:
    """Who wrote a question, for breakdowns: 'extracted:<kind>' (or a bare extraction kind) ->
    'extracted' (by rule from the text), 'llm:<model>' / 'llm_question' -> 'LLM-written', 'human' ->
    'human-written'; anything else as it is."""
    family = str(origin).split(":", 1)[0] if origin else "unknown"
    if family in ("llm", "llm_question"):
        return "LLM-written"
    if family in ("extracted", "extract") or family in GENERATORS:
        return "extracted"
    return "human-written" if family == "human" else family
