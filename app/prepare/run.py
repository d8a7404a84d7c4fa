"""The model stage: put the configured base model into the store and prove it works.

The check runs on a Ray worker and answers a few questions any working instruct checkpoint gets
right, so a conversion that scrambled the weights or lost the chat template fails here, before
any later stage spends hours on it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import mlflow
import ray

from app import cluster
from app.config import ExperimentConfig
from app.generate import answer_questions
from app.model_store import (
    ModelStoreError,
    check_target_modules,
    model_fingerprint,
    model_store,
)
from app.tracking import log_step_metrics, log_table, start_run

# Greedy answers a working instruct checkpoint of any size gets right: a conversion that
# scrambled weights or lost the chat template fails them.
PROBES: list[tuple[str, str]] = [
    ("What is the capital of France?", "paris"),
    ("What is the capital of Japan?", "tokyo"),
    ("What color is the sky on a clear day?", "blue"),
    ("How many days are there in a week?", "seven|7"),
]


def probe_passed(answer: str, expected: str) -> bool:
    text = answer.lower()
    return any(word in text for word in expected.split("|"))


def prepare_model(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
                  progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Resolve the base model into the store, check it on a Ray worker, record it in MLflow."""
    started = time.time()
    stored = model_store(cfg).resolve(cfg.model, progress=progress)
    prepare_s = time.time() - started
    check_target_modules(cfg.lora.target_modules, stored.path)

    tags = {"rerun_of": rerun_of} if rerun_of else {}
    with start_run(cfg, "prepare_model", config_path, inputs={"model": model_fingerprint(stored)}, tags=tags) as run:
        resources = cluster.connect(cfg.ray)
        progress(f"probing {stored.name} on a Ray worker (cluster: {resources.get('CPU', 0):.0f} CPUs)")
        # The check runs on a worker, not the driver: on a cluster that proves the store is
        # readable where training and serving will load it.
        probe = ray.remote(num_cpus=1)(answer_questions)
        answers = ray.get(probe.remote(stored.path, [q for q, _ in PROBES], 48, cfg.model.dtype))
        rows = [
            {"question": a.question, "answer": a.answer, "expected": exp, "passed": probe_passed(a.answer, exp),
             "new_tokens": a.new_tokens, "seconds": round(a.seconds, 3)}
            for a, (_, exp) in zip(answers, PROBES)
        ]
        for r in rows:
            progress(f"  {'ok ' if r['passed'] else 'BAD'} {r['question']} -> {r['answer']!r}")
        accuracy = sum(r["passed"] for r in rows) / len(rows)
        tokens = sum(r["new_tokens"] for r in rows)
        seconds = sum(r["seconds"] for r in rows)
        log_step_metrics({"probe_accuracy": accuracy, "hf_generate_tokens_per_s": tokens / seconds,
                          "prepare_seconds": prepare_s}, step=0)
        log_table(rows, "probes/answers.json")
        mlflow.log_dict(stored.manifest, "model/store.json")
        mlflow.set_tags({"model.name": stored.name, "model.path": str(stored.path)})
        summary = {"run_id": run.info.run_id, "model": stored.name, "path": str(stored.path),
                   "probe_accuracy": accuracy, "config_hash": cfg.content_hash()}
    if accuracy < 0.5:
        raise ModelStoreError(f"model {stored.name} failed {len(rows) - sum(r['passed'] for r in rows)} of "
                           f"{len(rows)} sanity probes: the checkpoint is broken (see run {summary['run_id']})")
    return summary
