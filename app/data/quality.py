"""Quality checks: every pair gets its scores, and a rejected one the reason, in the words of the rule.

Per-pair checks (run on Ray Data, :class:`QualityScorer`):
  * form: the question is a question of sane length that stands on its own (no reference to "the
    text", no unresolved pronoun) and does not contain its answer; the answer has sane length and
    is not degenerate (repeated phrases, the question again);
  * groundedness: the answer's new content words (those not already in the question) appear in
    the source chunk (lexical), and the answer
    is close to its evidence passage in all-MiniLM-L6-v2 space (semantic); the question's content
    words appear in the chunk too (a question about something the chunk never names is invented);
  * relevance: the answer is close to the question in embedding space;
  * for model-written questions, a round trip: of the chunk's sentences, the answer's is the one
    closest to the question (else the question asks about something else in the chunk).
Across pairs (:func:`deduplicate`, on the driver): exact duplicates (normalized question) and near
duplicates (question and answer both close in embedding space); the better-grounded copy stays.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from app.data.config import QualityConfig
from app.data.generate import sentence_spans
from app.datasets import normalize_text
from app.embed import embed, load_model, rowwise_cosine

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?")
_STOP = ENGLISH_STOP_WORDS | {"does", "use", "used", "using", "python", "return", "returns", "value", "function"}
_TEXT_REFERENCE = re.compile(r"\b(the|this|above|given|following) (text|passage|document|excerpt|paragraph|section|article)\b|"
                             r"\b(following|given|above|this) (\w+ )?(code|example|snippet|line|program|statement|output)\b|"
                             r"\b(mentioned|described|discussed) (above|here|in the)\b|\bthe author\b", re.IGNORECASE)
_PRONOUN = re.compile(r"\b(it|its|they|them|their|he|she|his|her|this|these|those)\b", re.IGNORECASE)
# A code span or quoted name resolves "it": "What does `x()` return when it fails?" is fine.
_NAMED = re.compile(r"`[^`]+`|\"[^\"]+\"|'[^']+'|\b[A-Za-z_]+\.[A-Za-z_]+|\b[a-z_]+\(\)")
# Generator preference when duplicates collide: what a person wrote or checked beats what a model wrote.
_PREFERENCE = {"faq": 1, "heading_question": 2, "definition": 3, "section": 3, "signature": 3, "term": 3, "example": 3,
               "statement": 3,
               "llm_question": 4, "llm": 5}


def content_words(text: str) -> list[str]:
    words = [w.lower() for w in _TOKEN.findall(text)]
    return [w for w in words if w not in _STOP and len(w) > 1]


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "ed", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def coverage(words: list[str], source: str) -> float:
    """Share of ``words`` present in ``source`` (crudely stemmed); 1.0 for no words."""
    if not words:
        return 1.0
    vocab = {_stem(w) for w in content_words(source)}
    return sum(_stem(w) in vocab for w in words) / len(words)


def new_information(question: str, answer: str) -> list[str]:
    """The answer's content words that the question does not already contain (all of them if none).

    Groundedness is judged on these: an answer that restates its question ("The purpose of X is to
    ...") borrows the question's words, which are in the chunk whether the rest is true or invented.
    """
    asked = set(content_words(question))
    words = content_words(answer)
    return [w for w in words if w not in asked] or words


def repeated_ngram_share(text: str, n: int = 4) -> float:
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else 1 - len(set(grams)) / len(grams)


def form_problems(question: str, answer: str, q: QualityConfig) -> list[str]:
    """Reasons the question or answer is malformed, empty when it passes."""
    problems = []
    q_words, a_words = question.split(), answer.split()
    if not question.strip().endswith("?"):
        problems.append("question does not end with '?'")
    if len(q_words) < q.min_question_words:
        problems.append(f"question too short ({len(q_words)} < {q.min_question_words} words)")
    if len(q_words) > q.max_question_words:
        problems.append(f"question too long ({len(q_words)} > {q.max_question_words} words)")
    if repeated_ngram_share(question, 3) > 0:
        problems.append("question repeats itself")
    if _TEXT_REFERENCE.search(question):
        problems.append("question refers to the source text instead of standing alone")
    elif _PRONOUN.search(question) and not _NAMED.search(question) and len(content_words(question)) < 3:
        problems.append(f"question has an unresolved pronoun ({_PRONOUN.search(question).group(0)!r})")
    if len(a_words) < q.min_answer_words:
        problems.append(f"answer too short ({len(a_words)} < {q.min_answer_words} words)")
    if len(a_words) > q.max_answer_words:
        problems.append(f"answer too long ({len(a_words)} > {q.max_answer_words} words)")
    if normalize_text(answer) == normalize_text(question):
        problems.append("answer repeats the question")
    elif repeated_ngram_share(answer) > 0.3:
        problems.append("answer is degenerate (repeats itself)")
    a_content = content_words(answer)
    if len(a_content) >= 3 and coverage(a_content, question) >= q.max_answer_in_question:
        problems.append("question contains its answer")
    return problems


MODEL_GENERATORS = ("llm", "llm_question")


def answer_ranks(questions: list[str], passages: list[str], contexts: list[str], vq: np.ndarray, vp: np.ndarray,
                 which: np.ndarray) -> list[float]:
    """For the rows in ``which``: 1 + the number of the context's sentences (outside the answer's
    passage) closer to the question than the passage is; NaN for the other rows."""
    ranks = [float("nan")] * len(questions)
    items = []
    for i in np.flatnonzero(which):
        passage = " ".join(passages[i].split())
        others = [" ".join(contexts[i][a:b].split()) for a, b in sentence_spans(contexts[i])]
        others = [x for x in others if len(x.split()) >= 3 and x not in passage and passage not in x]
        items.append((i, others))
    flat = [x for _, others in items for x in others]
    vs = embed(flat) if flat else np.zeros((0, 384), np.float32)
    k = 0
    for i, others in items:
        sims = vs[k:k + len(others)] @ vq[i]
        k += len(others)
        own = float(vp[i] @ vq[i])
        ranks[i] = 1.0 + float((sims > own + 0.02).sum())  # a near tie is not a different answer
    return ranks


def score_frame(df: pd.DataFrame, q: QualityConfig) -> pd.DataFrame:
    """Scores and verdict for a batch of pairs (the body of :class:`QualityScorer`)."""
    df = df.copy()
    questions, answers = df["question"].fillna("").tolist(), df["answer"].fillna("").tolist()
    passages = [ev or ctx for ev, ctx in zip(df["evidence"].fillna(""), df["context"].fillna(""))]
    # One embedding per distinct text: an answer is often its own evidence (statements, answer-first
    # questions), and a chunk's pairs share passages.
    distinct = list(dict.fromkeys([*questions, *answers, *passages]))
    vectors = embed(distinct)
    row = {t: i for i, t in enumerate(distinct)}
    vq, va, vp = (vectors[[row[t] for t in texts]] if texts else np.zeros((0, 384), np.float32)
                  for texts in (questions, answers, passages))
    df["score_relevance"] = rowwise_cosine(vq, va)
    df["score_semantic_grounding"] = rowwise_cosine(va, vp)
    df["score_lexical_grounding"] = [coverage(new_information(q, a), c) for q, a, c in zip(questions, answers, df["context"])]
    df["score_question_grounding"] = [coverage(content_words(x), c) for x, c in zip(questions, df["context"])]
    df["q_embedding"] = list(vq)
    df["a_embedding"] = list(va)
    model_written = df["generator"].isin(MODEL_GENERATORS).to_numpy() if "generator" in df else np.zeros(len(df), bool)
    df["score_answer_rank"] = answer_ranks(questions, passages, df["context"].fillna("").tolist(), vq, vp, model_written)
    parse_errors = df["parse_error"].fillna("") if "parse_error" in df else pd.Series([""] * len(df), index=df.index)
    reasons = []
    for i, (question, answer, perr) in enumerate(zip(questions, answers, parse_errors)):
        if perr:
            reasons.append(perr)  # "request failed: ..." or "malformed model output: ..."
            continue
        why = form_problems(question, answer, q)
        row = df.iloc[i]
        if row["score_lexical_grounding"] < q.min_lexical_grounding:
            why.append(f"answer not grounded in its chunk (lexical {row['score_lexical_grounding']:.2f} < {q.min_lexical_grounding})")
        if row["score_semantic_grounding"] < q.min_semantic_grounding:
            why.append(f"answer far from its evidence (cosine {row['score_semantic_grounding']:.2f} < {q.min_semantic_grounding})")
        if row["score_question_grounding"] < q.min_question_grounding:
            why.append(f"question about terms the chunk does not contain ({row['score_question_grounding']:.2f} < {q.min_question_grounding})")
        if row["score_relevance"] < q.min_relevance:
            why.append(f"answer unrelated to the question (cosine {row['score_relevance']:.2f} < {q.min_relevance})")
        elif model_written[i] and row["score_relevance"] < q.min_model_question_relevance:
            why.append(f"model-written question far from its answer (cosine {row['score_relevance']:.2f} < "
                       f"{q.min_model_question_relevance})")
        if model_written[i] and q.question_points_at_answer and row["score_answer_rank"] > 1:
            why.append(f"question points at another sentence of the chunk (its answer ranks {row['score_answer_rank']:.0f})")
        reasons.append("; ".join(why))
    df["reject_reason"] = reasons
    df["accepted"] = [not r for r in reasons]
    return df


class QualityScorer:
    """Ray Data actor: loads all-MiniLM-L6-v2 once, scores batches of pairs."""

    def __init__(self, quality: dict[str, Any]):
        self.q = QualityConfig(**quality)
        load_model()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return score_frame(batch, self.q)


def deduplicate(df: pd.DataFrame, q: QualityConfig) -> pd.DataFrame:
    """Reject exact and near duplicates among accepted pairs, keeping the preferred copy.

    Preferred: reviewed > extracted > LLM, then the better-grounded one. Near duplicates: question
    cosine >= ``near_duplicate`` and answer cosine >= ``near_duplicate_answer``.
    """
    df = df.copy()
    pref = df["generator"].map(_PREFERENCE).fillna(9)
    if "review_status" in df:
        pref = pref.where(~df["review_status"].isin(["approved", "edited"]), -1)
    order = df.assign(_pref=pref,
                      _ground=-df["score_semantic_grounding"]).sort_values(["_pref", "_ground", "pair_id"]).index
    keep_q: dict[str, str] = {}
    kept: list[int] = []
    for idx in order:
        if not df.at[idx, "accepted"]:
            continue
        key = normalize_text(df.at[idx, "question"])
        if key in keep_q:
            df.at[idx, "accepted"] = False
            df.at[idx, "reject_reason"] = f"exact duplicate of {keep_q[key]}"
            continue
        keep_q[key] = df.at[idx, "pair_id"]
        kept.append(idx)
    if len(kept) > 1:
        vq = np.stack(df.loc[kept, "q_embedding"].to_numpy())
        va = np.stack(df.loc[kept, "a_embedding"].to_numpy())
        alive = np.ones(len(kept), dtype=bool)
        for i in range(len(kept)):
            if not alive[i]:
                continue
            later = np.arange(i + 1, len(kept))
            later = later[alive[later]]
            if later.size == 0:
                continue
            sim_q, sim_a = vq[later] @ vq[i], va[later] @ va[i]
            for j, sq in zip(later[(sim_q >= q.near_duplicate) & (sim_a >= q.near_duplicate_answer)],
                             sim_q[(sim_q >= q.near_duplicate) & (sim_a >= q.near_duplicate_answer)]):
                alive[j] = False
                idx = kept[j]
                df.at[idx, "accepted"] = False
                df.at[idx, "reject_reason"] = f"near duplicate of {df.at[kept[i], 'pair_id']} (question cosine {sq:.2f})"
    return df
