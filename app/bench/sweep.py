"""``app bench sweep``: a running endpoint loaded at rising concurrency until it saturates.

Closed-loop levels (app.serving.loadgen, vLLM's metric definitions) with the domain prompts; each
level's p50/p90/p95/p99 TTFT, TPOT, ITL and E2E, request and token throughput, goodput under the
SLOs, and the deployment's peak resident memory. The sweep stops at the first level whose output
throughput gains less than ``bench.sweep.saturation_gain`` over the previous one (saturated).
Written to ``<home>/bench/sweep/<stamp>/`` and logged to MLflow (one step per concurrency).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

from app.bench.load import bench_dir, target, write_prompts
from app.bench.monitor import Sampler, peaks
from app.config import ExperimentConfig
from app.endpoint import bearer
from app.serving.loadgen import SLO, run_load, summarize

FIGURES = ("request_throughput", "output_throughput", "goodput", "slo_attainment", "failed",
           *(f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2e") for s in ("mean", "p50", "p90", "p95", "p99")))


def read_prompts(path: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sweep_levels(cfg: ExperimentConfig, url: str, model: str, key: str | None, prompts: list[list[dict]],
                 progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Warm up, then one closed-loop run per level until saturation; returns the points."""
    b, sw = cfg.bench, cfg.bench.sweep
    slo = SLO(ttft_s=sw.slo_p95_ttft_ms and sw.slo_p95_ttft_ms / 1000, tpot_s=sw.slo_p95_tpot_ms and
              sw.slo_p95_tpot_ms / 1000, e2e_s=sw.slo_p95_e2e_ms and sw.slo_p95_e2e_ms / 1000)
    headers = bearer(key)
    if sw.warmup_requests:
        asyncio.run(run_load(url, model, prompts, min(sw.warmup_requests, 4), sw.warmup_requests, b.max_tokens,
                             headers, seed=cfg.seed + 1, timeout_s=b.request_timeout_s * 2))
    points: list[dict[str, Any]] = []
    saturated_at = None
    for c in sw.concurrencies:
        n = max(sw.min_requests, sw.requests_per_level * c)
        sampler = Sampler(1.0, metrics_url=b.metrics_url)
        sampler.start()
        try:
            results, wall = asyncio.run(run_load(url, model, prompts, c, n, b.max_tokens, headers,
                                                 seed=cfg.seed + c, timeout_s=b.request_timeout_s * (1 + n / c)))
        finally:
            samples = sampler.stop()
        point = {"concurrency": c, **summarize(results, wall, slo),
                 **peaks(samples),
                 "errors": sorted({r.error for r in results if not r.ok})[:3]}
        points.append(point)
        progress(f"  c={c:>3}: {point['output_throughput']:7.1f} tok/s, {point['request_throughput']:.2f} req/s, "
                 f"p95 TTFT {point['p95_ttft_ms']:6.0f} ms, p95 TPOT {point['p95_tpot_ms']:5.0f} ms, "
                 f"goodput {point['goodput']:.2f} req/s" + (f", errors {point['errors']}" if point["errors"] else ""))
        if len(points) > 1 and point["output_throughput"] < (1 + sw.saturation_gain) * points[-2]["output_throughput"]:
            saturated_at = c
            break
    best = max(points, key=lambda p: p["output_throughput"])
    return {"points": points, "saturated_at": saturated_at, "max_output_throughput": best["output_throughput"],
            "at_concurrency": best["concurrency"], "max_goodput": max(p["goodput"] for p in points)}


def sweep(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
          progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``bench_sweep`` stage: the concurrency sweep of the configured target, tracked."""
    import mlflow

    from app.tracking import finite, log_step_metrics, start_run

    url, model, key = target(cfg)
    out_dir = bench_dir(cfg) / "sweep" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    n = write_prompts(cfg, out_dir / "prompts.jsonl", progress)
    prompts = read_prompts(out_dir / "prompts.jsonl")
    progress(f"sweep of {model} at {url}: levels {cfg.bench.sweep.concurrencies}, {n} test-split prompts, "
             f"{cfg.bench.max_tokens} tokens each")
    tags = {"target": cfg.bench.target, **({"rerun_of": rerun_of} if rerun_of else {})}
    with start_run(cfg, "bench_sweep", config_path, tags=tags) as run:
        result = sweep_levels(cfg, url, model, key, prompts, progress)
        for p in result["points"]:
            log_step_metrics({k: float(p[k]) for k in (*FIGURES, "peak_rss_mib") if k in p}, step=p["concurrency"])
        mlflow.set_tags({"served_model": model, "url": url})  # the config itself is logged as params
        result.update({"url": url, "model": model, "out_dir": str(out_dir), "mlflow_run_id": run.info.run_id})
        (out_dir / "points.json").write_text(json.dumps(finite(result), indent=2), encoding="utf-8")
        mlflow.log_artifacts(str(out_dir), "bench_sweep")
    return result
