"""Test examples for evaluation: the dataset's test split, or a user's JSONL with context retrieved.

A user-supplied file holds human-written questions and reference answers. Where an example has
no context, the passages of the team's corpus that best match the question are retrieved (BM25
or embeddings, top-k), so every model answers from the same context, as in the test split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from app.config import ExperimentConfig
from app.data.corpus import ensure_default_corpus
from app.datasets import origin_of, pair_id
from app.embed import embed
from app.errors import AppError
from app.eval.config import RetrievalConfig
from app.sampling import stratified_sample

# Deferred imports: bm25s is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

COLUMNS = ["example_id", "question", "reference", "context", "topic", "origin", "context_source"]


class EvalDataError(AppError, ValueError):
    """A test set that cannot be evaluated, with the reason (file, line, field)."""


def read_jsonl(path: Path) -> pd.DataFrame:
    """Examples of a JSONL file: question and answer (or reference) required; context, topic, id optional."""
    if not path.is_file():
        raise EvalDataError(f"evaluation.test_set {path} does not exist")
    rows, problems = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {n}: not JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"line {n}: expected an object, got {type(obj).__name__}")
            continue
        question = obj.get("question")
        reference = obj.get("answer", obj.get("reference"))
        if not isinstance(question, str) or not question.strip():
            problems.append(f"line {n}: no question")
            continue
        if not isinstance(reference, str) or not reference.strip():
            problems.append(f"line {n}: no answer (or reference)")
            continue
        context = obj.get("context") or ""
        if not isinstance(context, str):
            problems.append(f"line {n}: context must be a string")
            continue
        rows.append({"example_id": str(obj.get("id") or pair_id("human", path.name, question)), "question": question.strip(),
                     "reference": reference.strip(), "context": context.strip(),
                     "topic": str(obj.get("topic") or "unlabelled"), "origin": origin_of(str(obj.get("origin") or "human")),
                     "context_source": "given" if context.strip() else ""})
    if problems:
        shown = "; ".join(problems[:10]) + (f"; … {len(problems) - 10} more" if len(problems) > 10 else "")
        raise EvalDataError(f"{path}: {len(problems)} bad line(s): {shown}")
    if not rows:
        raise EvalDataError(f"{path} holds no examples")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    dupes = frame["example_id"][frame["example_id"].duplicated()].unique().tolist()
    if dupes:
        raise EvalDataError(f"{path}: example ids used twice: {dupes[:5]}")
    return frame


def dataset_split(path: Path, split: str = "test") -> pd.DataFrame:
    """The examples of one split of a built dataset, in the evaluation's columns."""
    file = path / f"{split}.parquet"
    if not file.is_file():
        raise EvalDataError(f"dataset {path} has no {split} split ({file.name} missing)")
    df = pd.read_parquet(file)
    if df.empty:
        raise EvalDataError(f"the {split} split of {path} is empty")
    return pd.DataFrame({"example_id": df["pair_id"], "question": df["question"], "reference": df["answer"],
                         "context": df["context"].fillna(""), "topic": df["topic"].fillna("unlabelled"),
                         "origin": (df["origin"] if "origin" in df else df["generator"]).map(origin_of),
                         "context_source": "dataset"})[COLUMNS]


def sample(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """At most ``limit`` examples, proportionally from every topic (deterministic for a seed)."""
    if not limit or limit >= len(frame):
        return frame.sort_values("example_id").reset_index(drop=True)

    keep = {r["example_id"] for r in stratified_sample(frame.to_dict("records"), limit, seed)}
    return frame[frame["example_id"].isin(keep)].sort_values("example_id").reset_index(drop=True)


# -- retrieval ----------------------------------------------------------------------------------------


class Retriever:
    """Top-k passages of a chunked corpus for a question, by BM25 or embedding cosine."""

    def __init__(self, chunks: list[dict[str, Any]], cfg: RetrievalConfig) -> None:
        if not chunks:
            raise EvalDataError("the retrieval corpus has no text to index")
        self.chunks, self.cfg = chunks, cfg
        texts = [c["text"] for c in chunks]
        if cfg.method == "bm25":
            import bm25s

            self._bm25 = bm25s.BM25()
            self._bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        else:
            self._vectors = embed(texts)

    def search(self, questions: list[str]) -> list[list[tuple[int, float]]]:
        """(chunk index, score) of the best ``top_k`` chunks per question, best first."""
        k = min(self.cfg.top_k, len(self.chunks))
        if self.cfg.method == "bm25":
            import bm25s

            idx, scores = self._bm25.retrieve(bm25s.tokenize(questions, stopwords="en", show_progress=False), k=k,
                                              show_progress=False)
            return [[(int(i), float(s)) for i, s in zip(ri, rs)] for ri, rs in zip(idx, scores)]

        sims = embed(questions) @ self._vectors.T
        order = np.argsort(-sims, axis=1)[:, :k]
        return [[(int(i), float(sims[q, i])) for i in row] for q, row in enumerate(order)]

    def contexts(self, questions: list[str]) -> list[str]:
        return ["\n\n".join(self.chunks[i]["text"] for i, _ in hits) for hits in self.search(questions)]


def corpus_chunks(cfg: ExperimentConfig, tokenizer_file: Path, progress: Callable[[str], None]) -> list[dict]:
    """The retrieval corpus chunked as the dataset build chunks it (Ray Data over the files)."""
    where = cfg.evaluation.retrieval.corpus_dir or cfg.data.docs_dir
    root = Path(where).expanduser().resolve() if where else ensure_default_corpus(cfg.paths.resolved_home(), progress)
    if not root.is_dir():
        raise EvalDataError(f"retrieval corpus {root} does not exist or is not a folder")
    # Deferred for start-up time: the dataset stage's module brings Ray Data, the quality checks
    # (sklearn), SQLAlchemy and the Serve client; training workers import this module for Retriever.
    from app.data.build import read_corpus

    docs, _ = read_corpus(cfg, root, tokenizer_file, progress)
    return [c for d in docs for c in d["chunks"]]


def fill_contexts(frame: pd.DataFrame, cfg: ExperimentConfig, tokenizer_file: Path,
                  progress: Callable[[str], None]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Retrieve a context for every example that has none; facts about the retrieval for the report."""
    missing = frame["context"].str.strip() == ""
    if not missing.any():
        return frame, {"retrieved": 0}
    r = cfg.evaluation.retrieval
    chunks = corpus_chunks(cfg, tokenizer_file, progress)
    progress(f"retrieving context for {int(missing.sum())} questions ({r.method}, top {r.top_k} of {len(chunks)} "
             "passages)")
    frame = frame.copy()
    groups = {"": missing}
    if r.scope == "topic":
        folders = {c["doc_path"].split("/", 1)[0] for c in chunks if "/" in c["doc_path"]}
        scoped = {t: missing & (frame["topic"] == t) for t in folders if (missing & (frame["topic"] == t)).any()}
        rest = missing.copy()
        for m in scoped.values():
            rest &= ~m
        groups = {**scoped, **({"": rest} if rest.any() else {})}
        progress(f"  retrieval scoped by topic: {', '.join(f'{t} ({int(m.sum())})' for t, m in scoped.items())}"
                 + (f"; {int(rest.sum())} questions search the whole corpus" if rest.any() else ""))
    for topic, rows in groups.items():
        part = [c for c in chunks if c["doc_path"].startswith(topic + "/")] if topic else chunks
        frame.loc[rows, "context"] = Retriever(part, r).contexts(frame.loc[rows, "question"].tolist())
    frame.loc[missing, "context_source"] = f"retrieved:{r.method}" + (":topic" if r.scope == "topic" else "")
    return frame, {"retrieved": int(missing.sum()), "method": r.method, "top_k": r.top_k, "passages": len(chunks),
                   "scope": r.scope}
