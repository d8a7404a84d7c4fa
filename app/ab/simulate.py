"""A simulated user population: real HTTP requests to the running experiment, feedback that depends on
the answer each user actually got.

Each simulated user (its own unit id, sent in ``ab.unit_header``) asks ``questions_per_user`` questions
drawn from the test split (questions with a known answer), with the prompt the evaluation and training
use, at temperature 0. It judges the answer it received with the evaluation framework's rule
(``evaluation.domain_rule``) against the reference and sends thumbs up when the rule says correct,
thumbs down otherwise, each verdict flipped with probability ``noise`` (users misjudge). So the
experiment measures the real difference between the arms' answers, not an injected probability.

Every ``look_every_s`` it reads the experiment's report (app.ab.report) and stops at a decision
(winner or no difference), at ``max_users``, or at ``budget_s``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, Callable

import httpx

from app.ab.config import AbConfig
from app.ab.router import HEADER_REQUEST
from app.config import ExperimentConfig
from app.errors import AppError


class SimulationError(AppError, RuntimeError):
    """The simulation could not run; the message says why."""


def test_questions(cfg: ExperimentConfig, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """The evaluation's test set with each example's chat messages (as evaluation builds them)."""
    from transformers import AutoTokenizer

    from app.eval.answer import prompts
    from app.eval.run import load_test_set
    from app.eval.testset import fill_contexts
    from app.model_store import model_store

    frame, _ = load_test_set(cfg, progress)
    base = model_store(cfg).get(cfg.model.name)
    frame, _ = fill_contexts(frame, cfg, base.path / "tokenizer.json", progress)
    messages = prompts(frame, cfg, AutoTokenizer.from_pretrained(base.path))
    return [{"question": q, "reference": r, "messages": json.loads(m)}
            for q, r, m in zip(frame["question"], frame["reference"], messages)]


async def _one_user(client: httpx.AsyncClient, url: str, ab: AbConfig, user: str, questions: list[dict[str, Any]],
                    rng: random.Random, n_questions: int, noise: float, max_tokens: int, rule,
                    tally: dict[str, Any]) -> None:
    from app.eval.metrics import score_answers

    for q in rng.sample(questions, min(n_questions, len(questions))):
        body = {"model": ab.public_model, "messages": q["messages"], "max_tokens": max_tokens, "temperature": 0}
        try:
            resp = await client.post(f"{url}/v1/chat/completions", json=body, headers={ab.unit_header: user})
        except httpx.HTTPError as exc:
            tally["http_errors"] += 1
            tally["last_error"] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        if resp.status_code != 200:
            tally["http_errors"] += 1
            tally["last_error"] = f"{resp.status_code}: {resp.text[:300]}"
            continue
        arm = resp.headers.get("x-experiment-arm", "?")
        answer = resp.json()["choices"][0]["message"]["content"] or ""
        correct = bool(score_answers([answer], [q["reference"]], rule)[0]["domain_correct"])
        thumbs = correct != (rng.random() < noise)
        fb = await client.post(f"{url}/v1/feedback", json={"request_id": resp.headers[HEADER_REQUEST],
                                                           "thumbs_up": thumbs, "user": user})
        if fb.status_code != 201:
            tally["feedback_errors"] += 1
            tally["last_error"] = f"feedback {fb.status_code}: {fb.text[:300]}"
        tally["requests"] += 1
        arm_tally = tally["arms"].setdefault(arm, {"requests": 0, "correct": 0, "thumbs_up": 0})
        arm_tally["requests"] += 1
        arm_tally["correct"] += correct
        arm_tally["thumbs_up"] += thumbs


async def run_population(cfg: ExperimentConfig, url: str, headers: dict[str, str], questions: list[dict[str, Any]],
                         users: int, questions_per_user: int, noise: float, concurrency: int, budget_s: float,
                         look: Callable[[], dict[str, Any]], look_every_s: float, seed: int,
                         progress: Callable[[str], None]) -> dict[str, Any]:
    """Drive ``users`` simulated users at ``concurrency`` in flight; stop early at a decision."""
    from app.eval.metrics import DomainRule

    rule = DomainRule.of(cfg.evaluation)
    tally: dict[str, Any] = {"requests": 0, "http_errors": 0, "feedback_errors": 0, "last_error": "", "arms": {}}
    started = time.monotonic()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(users):
        queue.put_nowait(i)
    stop = asyncio.Event()
    report: dict[str, Any] = {}
    decided_after: float | None = None
    timeout = httpx.Timeout(cfg.serving.request_timeout_s, connect=10)

    async with httpx.AsyncClient(headers=headers, timeout=timeout) as client:
        async def worker(w: int) -> None:
            while not stop.is_set() and time.monotonic() - started < budget_s:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                user_rng = random.Random(f"{seed}:{i}")
                await _one_user(client, url, cfg.ab, f"sim-{seed}-{i}", questions, user_rng, questions_per_user,
                                noise, cfg.evaluation.max_new_tokens, rule, tally)

        async def watcher() -> None:
            nonlocal report, decided_after
            while not stop.is_set():
                await asyncio.sleep(look_every_s)
                report = await asyncio.to_thread(look)
                outcomes = {a: d["outcome"] for a, d in report["decisions"].items()}
                progress(f"{time.monotonic() - started:.0f} s, {tally['requests']} requests: {outcomes}")
                if any(o in ("winner", "no difference", "invalid") for o in outcomes.values()):
                    decided_after = time.monotonic() - started
                    stop.set()

        watch = asyncio.create_task(watcher())
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        stop.set()
        watch.cancel()
    if tally["requests"] == 0:
        raise SimulationError(f"no simulated request was answered ({tally['http_errors']} HTTP errors; last: "
                              f"{tally['last_error'] or '-'}): is the experiment running at {url}?")
    report = await asyncio.to_thread(look)
    if decided_after is None and any(d["outcome"] in ("winner", "no difference", "invalid")
                                     for d in report["decisions"].values()):
        decided_after = time.monotonic() - started
    return {"elapsed_s": round(time.monotonic() - started, 1), "decided_after_s": decided_after,
            "users_started": users - queue.qsize(), "noise": noise, "tally": tally, "report": report}


__all__ = ["run_population", "test_questions", "SimulationError"]
