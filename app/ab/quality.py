"""Automatic quality scores of recorded responses, computed after the fact (never on the request's path).

Reference-free, for live traffic:
- ``answer_words``: length in words;
- ``empty_or_refusal``: no text, or an answer that declines (a fixed list of refusal openings);
- ``groundedness``: when the request carried a context (its system message), the share of the
  answer's content words that occur in that context (stemmed, as the evaluation's coverage rule);
- ``similarity_to_primary``: on a shadow response, the all-MiniLM-L6-v2 cosine to the answer the user
  got (agreement between the arms).
Reference-based, when the question has a known answer: the evaluation framework's ``domain_correct``
and ``token_f1`` under the configured rule (app.eval.metrics.score_answers).
"""

from __future__ import annotations

import re
from typing import Any

from app.eval.metrics import DomainRule, content_words, score_answers

REFUSAL = re.compile(r"^\s*(i('m| am) (sorry|unable|not able)|i can(no|')t|sorry,|as an ai\b|i do(n't| not) know\b|"
                     r"unfortunately,? i)", re.IGNORECASE)


def groundedness(answer: str, context: str | None) -> float | None:
    """Share of the answer's content words found in ``context`` (None without a context or content words)."""
    if not context:
        return None
    words = content_words(answer)
    if not words:
        return None
    ctx = set(content_words(context))
    return sum(w in ctx for w in words) / len(words)


def reference_free(answer: str, context: str | None) -> dict[str, Any]:
    text = answer or ""
    return {"answer_words": len(text.split()), "empty_or_refusal": not text.strip() or bool(REFUSAL.match(text)),
            "groundedness": groundedness(text, context)}


def score_rows(rows: list[dict[str, Any]], rule: DomainRule, primaries: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Scores for recorded request rows (dicts with id, answer, context, reference, role, primary_id,
    status), by id. ``primaries`` maps a served request id to its answer, for shadow rows whose served
    answer is not among ``rows``."""
    from app.embed import embed, rowwise_cosine

    answers = {r["id"]: r.get("answer") or "" for r in rows if r.get("role") != "shadow"}
    answers.update(primaries or {})
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out[r["id"]] = reference_free(r.get("answer") or "", r.get("context"))
    known = [r for r in rows if r.get("reference") and r.get("status") == "ok"]
    if known:
        scored = score_answers([r.get("answer") or "" for r in known], [r["reference"] for r in known], rule)
        for r, s in zip(known, scored):
            out[r["id"]].update(domain_correct=s["domain_correct"], token_f1=s["token_f1"])
    pairs = [(r["id"], r.get("answer") or "", answers[r["primary_id"]]) for r in rows
             if r.get("role") == "shadow" and r.get("status") == "ok" and r.get("primary_id") in answers]
    if pairs:
        sims = rowwise_cosine(embed([p[1] for p in pairs]), embed([p[2] for p in pairs]))
        for (rid, _, _), sim in zip(pairs, sims):
            out[rid]["similarity_to_primary"] = float(sim)
    return out


__all__ = ["score_rows", "reference_free", "groundedness", "REFUSAL"]
