"""Answer-level metrics: SQuAD-style exact match and token F1, semantic similarity, domain accuracy.

Plain functions over strings (and embeddings), shared by training-time validation and the
evaluation stage, so a figure means the same thing wherever it is reported.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, punctuation and articles removed, whitespace collapsed."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalization (SQuAD v1.1).

    Two empty answers agree (1.0); an empty answer against a non-empty one scores 0.
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def semantic_similarity(predictions: list[str], references: list[str]) -> np.ndarray:
    """Cosine of all-MiniLM-L6-v2 embeddings, one value per (prediction, reference) pair."""
    from app.data.embed import embed, rowwise_cosine

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return np.zeros(0, dtype=np.float32)
    return rowwise_cosine(embed(predictions), embed(references))


def domain_correct(f1: float, similarity: float, f1_threshold: float, similarity_threshold: float,
                   rule: str = "f1_or_similarity") -> bool:
    """The configured definition of a correct domain answer (see EvaluationConfig.domain_rule)."""
    by_f1, by_sim = f1 >= f1_threshold, similarity >= similarity_threshold
    if rule == "f1_or_similarity":
        return by_f1 or by_sim
    if rule == "f1_and_similarity":
        return by_f1 and by_sim
    if rule == "f1":
        return by_f1
    if rule == "similarity":
        return by_sim
    raise ValueError(f"unknown domain accuracy rule {rule!r}")


def score_answers(predictions: list[str], references: list[str], f1_threshold: float,
                  similarity_threshold: float, rule: str = "f1_or_similarity",
                  similarity: Iterable[float] | None = None) -> list[dict[str, float]]:
    """Per-example exact_match, token_f1, semantic_similarity and domain_correct (0/1)."""
    sims = np.asarray(list(similarity) if similarity is not None else semantic_similarity(predictions, references))
    out = []
    for pred, ref, sim in zip(predictions, references, sims):
        f1 = token_f1(pred, ref)
        out.append({"exact_match": exact_match(pred, ref), "token_f1": f1, "semantic_similarity": float(sim),
                    "domain_correct": float(domain_correct(f1, float(sim), f1_threshold, similarity_threshold, rule))})
    return out


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over the examples (empty input: empty dict)."""
    if not rows:
        return {}
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


# -- n-gram overlap: BLEU (sacrebleu) and ROUGE (rouge-score), the libraries behind HF `evaluate` --

OVERLAP_METRICS = ("bleu", "rouge1", "rouge2", "rougeL")


def overlap_scores(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """Per-example sentence BLEU (sacrebleu, effective order, 0-1) and ROUGE-1/2/L F-measures (stemmed)."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    bleu = BLEU(effective_order=True)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out = []
    for pred, ref in zip(predictions, references):
        r = scorer.score(ref, pred)
        b = bleu.sentence_score(pred, [ref]).score / 100 if pred.strip() else 0.0
        out.append({"bleu": min(1.0, float(b)), **{k: float(r[k].fmeasure) for k in ("rouge1", "rouge2", "rougeL")}})
    return out


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus-level BLEU (0-1): n-gram counts pooled over all examples, as BLEU is usually reported."""
    from sacrebleu.metrics import BLEU

    if not predictions:
        return 0.0
    return min(1.0, float(BLEU().corpus_score(predictions, [references]).score / 100))
