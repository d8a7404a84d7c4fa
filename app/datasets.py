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
import os
import re
import shutil
import socket
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


# A build writes its dataset into a hidden folder and renames it to its version when every file is
# written, then points LATEST at it (replacing the file whole). A build killed half-way leaves at most
# a hidden ``.partial-*`` folder, which nothing reads and the next build of the dataset removes; a
# folder named as a version is complete, and LATEST names the last build that finished.
PARTIAL_PREFIX = ".partial-"


def latest_dataset(cfg: ExperimentConfig) -> Path:
    """Folder of the last successful build of the configured dataset."""
    pointer = datasets_root(cfg) / "LATEST"
    if not pointer.is_file():
        raise DatasetError(f"no build of dataset {cfg.data.name!r} under {datasets_root(cfg)}: run `app dataset build`")
    version = pointer.read_text().strip()
    path = datasets_root(cfg) / version
    if not version or "/" in version or version.startswith(".") or not path.is_dir():
        raise DatasetError(f"{pointer} names {version!r}, not a build of dataset {cfg.data.name!r} under "
                           f"{datasets_root(cfg)}: run `app dataset build`")
    return path


def publish_latest(cfg: ExperimentConfig, version: str) -> None:
    """Make ``version`` the latest build: LATEST is replaced whole, never seen empty or half-written."""
    write_atomic(datasets_root(cfg) / "LATEST", version)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: a reader (or a process
    killed meanwhile) sees the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def partial_folder(cfg: ExperimentConfig, version: str) -> Path:
    """Where a build writes ``version`` before renaming it into place (named by its host and pid)."""
    return datasets_root(cfg) / f"{PARTIAL_PREFIX}{version}-{os.getpid()}-{socket.gethostname()}"


def remove_stale_partials(cfg: ExperimentConfig) -> list[Path]:
    """Remove the unfinished output folders of builds of this dataset that died on this host (their
    process is gone); those of live builds, or of other hosts, stay. Returns the removed folders."""
    root, host, removed = datasets_root(cfg), socket.gethostname(), []
    for folder in sorted(root.glob(f"{PARTIAL_PREFIX}*")) if root.is_dir() else []:
        # .partial-<yyyymmdd>-<hhmmss>-<hash>-<pid>-<host>
        parts = folder.name[len(PARTIAL_PREFIX):].split("-", 4)
        if len(parts) != 5 or not parts[3].isdigit() or parts[4] != host or _alive(int(parts[3])):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
