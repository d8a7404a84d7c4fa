"""An LLM judge: a model grades every answer against the reference, a second domain accuracy.

The judge is any chat model behind an OpenAI-compatible API (a store model served with the
evaluated ones, or an external endpoint), asked with a configurable prompt and greedy decoding
through the same ray.data.llm path as the answers. Its reply is read for the first verdict word
(correct/incorrect, yes/no); a reply without one, a failed request, and an empty answer all count
as incorrect, and how many there were is reported so the figure can be trusted or not.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import pandas as pd

from app.config import ExperimentConfig
from app.eval.answer import answer_all
from app.eval.config import JudgeConfig

_VERDICT = re.compile(r"\b(incorrect|correct|yes|no)\b", re.IGNORECASE)
SYSTEM = "You are a strict grader. Reply with a single word."


def parse_verdict(reply: str) -> float | None:
    """1.0 (correct), 0.0 (incorrect), or None when the reply gives no verdict word."""
    found = _VERDICT.search(reply or "")
    if not found:
        return None
    return 1.0 if found.group(1).lower() in ("correct", "yes") else 0.0


def judge_messages(questions: list[str], references: list[str], answers: list[str], judge: JudgeConfig) -> list[str]:
    """The judge's chat messages (JSON) per answer."""
    return [json.dumps([{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": judge.prompt.format(question=q, reference=r, answer=a)}])
            for q, r, a in zip(questions, references, answers)]


def judge_answers(frame: pd.DataFrame, answers: list[str], model: str, cfg: ExperimentConfig,
                  progress: Callable[[str], None]) -> tuple[list[float], list[str], dict[str, Any]]:
    """(verdicts 1/0, the judge's replies, facts) for one model's answers, in the frame's order."""
    judge = cfg.evaluation.judge
    assert judge is not None
    asked = [i for i, a in enumerate(answers) if a.strip()]
    scores, replies = [0.0] * len(answers), [""] * len(answers)
    facts = {"judge": judge.model.name, "asked": len(asked), "no_verdict": 0, "request_errors": 0}
    if not asked:
        return scores, replies, facts
    sub = frame.iloc[asked]
    messages = judge_messages(sub["question"].tolist(), sub["reference"].tolist(), [answers[i] for i in asked], judge)
    progress(f"  judging {model}'s answers with {judge.model.name}")
    got, errors, call = answer_all(sub, messages, judge.model, cfg, progress, max_tokens=judge.max_new_tokens)
    for i, reply, error in zip(asked, got, errors):
        replies[i] = reply
        verdict = parse_verdict(reply) if not error else None
        facts["request_errors"] += bool(error)
        facts["no_verdict"] += verdict is None and not error
        scores[i] = verdict or 0.0
    facts["seconds"] = call["seconds"]
    if facts["no_verdict"] or facts["request_errors"]:
        progress(f"  judge: {facts['no_verdict']} replies without a verdict, {facts['request_errors']} failed "
                 f"requests (counted as incorrect) for {model}")
    return scores, replies, facts
