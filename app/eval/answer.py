"""Answers of every evaluated model to the same prompts, through OpenAI-compatible endpoints.

Each model answers through ray.data.llm's HTTP processor (retries, concurrency, timeouts from
config) with fixed decoding: greedy (temperature 0), the same max_tokens, seed 0. Store models are
served by the project's vLLM-on-Ray-Serve app; an entry with a URL is any endpoint (another
team's deployment, a provider). A request that fails stays a row with its error and an empty
answer (scored as wrong), so one bad response never loses the run.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import httpx
import pandas as pd

from app.config import ExperimentConfig
from app.endpoint import (
    base_url,
    bearer,
    external_endpoint,
    listed_models,
    response_text,
    serving_key,
    session_factory,
)
from app.errors import AppError
from app.eval.config import EvalModel
from app.prompts import qa_messages, truncate_context

# Deferred imports: ray is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


class EvalError(AppError, RuntimeError):
    """An evaluation that cannot run, with the reason."""


def prompts(frame: pd.DataFrame, cfg: ExperimentConfig, tokenizer: Any) -> list[str]:
    """The chat messages of every example (JSON), built exactly as training and serving build them."""
    p = cfg.prompt
    return [json.dumps(qa_messages(q, truncate_context(c or "", tokenizer, p.max_context_tokens), p))
            for q, c in zip(frame["question"], frame["context"])]


def endpoint_of(m: EvalModel, cfg: ExperimentConfig) -> tuple[str, str | None]:
    """(base URL ending in /v1, API key) for a model."""
    if m.url:
        return external_endpoint(m.url, m.api_key_env, f"evaluation model {m.name}", EvalError)
    return base_url(cfg.serving) + "/v1", serving_key(cfg.serving)


def check_endpoint(m: EvalModel, base: str, key: str | None) -> None:
    try:
        ids = listed_models(base, key, timeout=15)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"evaluation model {m.name}: {base}/models does not answer ({exc})") from None
    if m.model_id not in ids:
        raise EvalError(f"evaluation model {m.name}: {base} does not serve {m.model_id!r} (it serves {sorted(ids)})")


def answer_all(frame: pd.DataFrame, messages: list[str], m: EvalModel, cfg: ExperimentConfig,
               progress: Callable[[str], None], max_tokens: int | None = None,
               ) -> tuple[list[str], list[str], dict[str, Any]]:
    """(answers, errors, facts) of one model for every example, in the frame's order (at most
    ``max_tokens`` new tokens each; default evaluation.max_new_tokens)."""
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    e = cfg.evaluation
    base, key = endpoint_of(m, cfg)
    check_endpoint(m, base, key)
    config = HttpRequestProcessorConfig(
        url=base + "/chat/completions", headers=bearer(key), batch_size=1,
        concurrency=e.concurrency, max_retries=cfg.data.generation.max_retries,
        base_retry_wait_time_in_s=cfg.data.generation.retry_wait_s, session_factory=session_factory(e.timeout_s),
        http_request_stage={"num_cpus": 0.1})  # I/O bound: the engines need the cores
    model_id, max_tokens = m.model_id, max_tokens or e.max_new_tokens

    def pre(row: dict[str, Any]) -> dict[str, Any]:
        return {"payload": {"model": model_id, "messages": json.loads(row["messages"]), "temperature": 0.0,
                            "max_tokens": max_tokens, "seed": 0}}

    def post(row: dict[str, Any]) -> dict[str, Any]:
        content, error = response_text(row.get("http_response"))
        return {"example_id": row["example_id"], "answer": content.strip(), "error": error}

    rows = pd.DataFrame({"example_id": frame["example_id"], "messages": messages})
    n_blocks = min(len(rows), 8 * e.concurrency)
    ds = ray.data.from_pandas([rows.iloc[i::n_blocks] for i in range(n_blocks)])
    progress(f"  {m.name}: {len(rows)} questions to {base} (model {model_id}, greedy, max {max_tokens} tokens)")
    started = last = time.time()
    got: dict[str, dict[str, Any]] = {}
    # Light map stages: at Ray Data's default of one CPU per task they can take the CPUs the HTTP
    # actors wait for while the Serve replicas hold the rest (three served models on 8 CPUs hung).
    light = {"num_cpus": 0.1}
    processor = build_processor(config, preprocess=pre, postprocess=post, preprocess_map_kwargs=light,
                                postprocess_map_kwargs=light)
    for r in processor(ds).iter_rows():
        got[r["example_id"]] = r
        if time.time() - last >= 30:
            last, rate = time.time(), len(got) / (time.time() - started)
            progress(f"  {m.name}: {len(got)}/{len(rows)} answered ({rate:.2f}/s)")
    seconds = time.time() - started
    out = [got.get(i, {"answer": "", "error": "no result"}) for i in frame["example_id"]]
    answers, errors = [o["answer"] or "" for o in out], [o["error"] or "" for o in out]
    failed = sum(bool(x) for x in errors)
    progress(f"  {m.name}: {len(rows)} answers in {seconds:.0f} s ({len(rows) / seconds:.2f}/s), {failed} failed")
    return answers, errors, {"endpoint": base, "model_id": model_id, "seconds": round(seconds, 1),
                             "examples_per_s": round(len(rows) / seconds, 3) if seconds else None,
                             "request_errors": failed}
