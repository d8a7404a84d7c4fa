"""``app bench compare``: pairs of served model ids on the running endpoint, interleaved, with ratios.

Each pair (``bench.compare.pairs``; default: every other served model against the first of
``serving.models``, and the A/B public name against the first arm's model when the experiment
runs) is loaded with the same closed-loop load (app.serving.loadgen, the domain prompts, fixed
output length) in ``rounds`` rounds, the two sides alternating which goes first (A B, B A, ...)
so slow drift of a shared machine falls on both. Per round the candidate/baseline ratio of every
figure; reported: the geometric mean ratio with its 95% t-interval over rounds (log scale) and the
min-max, and whether the interval excludes 1 (a difference beyond the measured noise).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from app.bench.load import BenchError, bench_dir, endpoint, served_models, write_prompts
from app.bench.sweep import read_prompts
from app.config import ExperimentConfig
from app.endpoint import bearer
from app.serving.loadgen import run_load, summarize

# Figures compared, and which direction is better.
HIGHER_BETTER = {"output_throughput": True, "request_throughput": True, "mean_ttft_ms": False, "p95_ttft_ms": False,
                 "mean_tpot_ms": False, "p95_tpot_ms": False, "mean_e2e_ms": False, "p95_e2e_ms": False}


def unit_in_arm(cfg: ExperimentConfig, url: str, key: str | None, arm: str, tries: int = 60) -> str:
    """A unit id the running experiment assigns to ``arm`` (asked, not computed: the live split may differ
    from the config's), so the A/B endpoint's requests reach the same engine as the direct ones."""
    import httpx

    body = {"model": cfg.ab.public_model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    for i in range(tries):
        unit = f"bench-unit-{i}"
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers={**bearer(key), cfg.ab.unit_header: unit},
                       timeout=cfg.bench.request_timeout_s)
        if r.status_code == 200 and r.headers.get("x-experiment-arm") == arm:
            return unit
    raise BenchError(f"no unit id among {tries} tried is assigned to arm {arm!r} of {cfg.ab.public_model!r} "
                     "(is its weight 0?)")


def default_pairs(cfg: ExperimentConfig, served: set[str]) -> list[dict[str, str]]:
    listed = served_models(cfg)
    if cfg.ab.public_model in served:  # an experiment runs: its arms' models are served too
        listed += [a.model for a in cfg.ab.arms if a.model not in listed]
    models = [m for m in listed if m in served]
    pairs = [{"name": f"{m}-vs-{models[0]}", "baseline": models[0], "candidate": m} for m in models[1:]]
    if cfg.ab.public_model in served:
        arm = cfg.ab.arm(cfg.ab.baseline).model
        if arm in served:
            pairs.append({"name": "ab-endpoint-vs-direct", "baseline": arm, "candidate": cfg.ab.public_model})
    return pairs


def ratio_summary(ratios: list[float]) -> dict[str, Any]:
    """Geometric mean of per-round ratios with a 95% t-interval on the log scale, and the range."""
    from scipy import stats

    logs = [math.log(r) for r in ratios if r > 0 and math.isfinite(r)]
    if not logs:
        return {"ratio": None, "rounds": 0}
    mean = sum(logs) / len(logs)
    out: dict[str, Any] = {"ratio": math.exp(mean), "min": min(ratios), "max": max(ratios), "rounds": len(logs)}
    if len(logs) > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
        half = stats.t.ppf(0.975, len(logs) - 1) * sd / math.sqrt(len(logs))
        out["ci95"] = [math.exp(mean - half), math.exp(mean + half)]
        out["beyond_noise"] = not (out["ci95"][0] <= 1 <= out["ci95"][1])
    return out


def compare_pair(cfg: ExperimentConfig, url: str, key: str | None, pair: dict[str, str], prompts: list[list[dict]],
                 progress: Callable[[str], None]) -> dict[str, Any]:
    cc = cfg.bench.compare
    n = max(cc.min_requests, cc.requests_per_round * cc.concurrency)
    timeout = cfg.bench.request_timeout_s * (1 + n / cc.concurrency)
    headers = {"baseline": bearer(key), "candidate": bearer(key)}
    if pair["candidate"] == cfg.ab.public_model:  # through the A/B ingress, to the baseline's engine
        headers["candidate"][cfg.ab.unit_header] = unit_in_arm(cfg, url, key, cfg.ab.baseline)
    # Warm both sides on every prompt of the pool (one token each): first-request compilation, and the
    # prefix cache, which earlier loads of one side alone would otherwise have filled for it only.
    for side in ("baseline", "candidate"):
        for messages in prompts:
            asyncio.run(run_load(url, pair[side], [messages], 1, 1, 1, headers[side], timeout_s=timeout))
    rounds: list[dict[str, Any]] = []
    for r in range(cc.rounds):
        order = ("baseline", "candidate") if r % 2 == 0 else ("candidate", "baseline")
        row: dict[str, Any] = {"round": r + 1, "order": list(order)}
        for side in order:
            results, wall = asyncio.run(run_load(url, pair[side], prompts, cc.concurrency, n, cfg.bench.max_tokens,
                                                 headers[side], seed=cfg.seed + r, timeout_s=timeout))
            s = summarize(results, wall)
            if s["failed"]:
                errors = sorted({x.error for x in results if not x.ok})[:2]
                raise BenchError(f"compare {pair['name']}: {s['failed']:.0f} of {n} requests to {pair[side]} failed: "
                                 f"{errors}")
            row[side] = {k: s[k] for k in HIGHER_BETTER}
        row["ratio"] = {k: row["candidate"][k] / row["baseline"][k] if row["baseline"][k] else float("nan")
                        for k in HIGHER_BETTER}
        rounds.append(row)
        progress(f"  {pair['name']} round {r + 1}/{cc.rounds}: output tok/s {row['baseline']['output_throughput']:.1f} "
                 f"-> {row['candidate']['output_throughput']:.1f} (x{row['ratio']['output_throughput']:.2f}), "
                 f"p95 E2E x{row['ratio']['p95_e2e_ms']:.2f}")
    ratios = {k: ratio_summary([row["ratio"][k] for row in rounds]) | {"higher_is_better": hb}
              for k, hb in HIGHER_BETTER.items()}
    return {**pair, "concurrency": cc.concurrency, "requests_per_round": n, "rounds": rounds, "ratios": ratios}


def compare(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``bench_compare`` stage: every pair, interleaved rounds, ratios with their spread, tracked."""
    import mlflow

    from app.tracking import finite, log_step_metrics, start_run

    url, key, served = endpoint(cfg)
    pairs = [p.model_dump() for p in cfg.bench.compare.pairs] or default_pairs(cfg, served)
    if not pairs:
        raise BenchError(f"nothing to compare: {url} serves {sorted(served)}; serve two models (serving.models) or "
                         "name bench.compare.pairs")
    missing = sorted({p[s] for p in pairs for s in ("baseline", "candidate")} - served)
    if missing:
        raise BenchError(f"bench.compare.pairs name models not served at {url}: {missing} (served: {sorted(served)})")
    out_dir = bench_dir(cfg) / "compare" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_prompts(cfg, out_dir / "prompts.jsonl", progress)
    prompts = read_prompts(out_dir / "prompts.jsonl")[: cfg.bench.compare.prompts]
    progress(f"compare at {url}: {[p['name'] for p in pairs]}, {cfg.bench.compare.rounds} interleaved rounds each")
    tags = {**({"rerun_of": rerun_of} if rerun_of else {})}
    with start_run(cfg, "bench_compare", config_path, tags=tags) as run:
        results = [compare_pair(cfg, url, key, p, prompts, progress) for p in pairs]
        for res in results:
            for k, r in res["ratios"].items():
                if r.get("ratio") is not None:
                    log_step_metrics({f"{res['name']}.{k}.ratio": r["ratio"]}, step=0)
        doc = {"url": url, "pairs": results, "out_dir": str(out_dir), "mlflow_run_id": run.info.run_id}
        (out_dir / "compare.json").write_text(json.dumps(finite(doc), indent=2), encoding="utf-8")
        mlflow.log_artifacts(str(out_dir), "bench_compare")
    return doc
