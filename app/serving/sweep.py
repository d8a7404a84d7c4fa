"""Serving-parameter sweep: deploy each setting on Ray Serve, load it, keep the best under an SLO.

Every trial (see :func:`sweep_trials`) is deployed alone on the cluster, warmed
up, then loaded with streamed requests at each configured concurrency (closed loop, fixed output
length). A load level *meets the SLO* when its p95 latencies are within the configured limits; a
trial's score is its best throughput among the levels that meet it, i.e. throughput at equal p95
latency. The winner is written back as a Serve config plus the serving overrides, and everything
goes to one MLflow run (a child run per trial, metrics stepped by concurrency).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from app import cluster, endpoint
from app.config import ExperimentConfig
from app.model_store import model_fingerprint, model_store
from app.secrets import redact
from app.serving.builder import serve_config_dict
from app.serving.config import (
    VLLM_DEFAULTS,
    ServeSweepConfig,
    ServingConfig,
    trial_name,
    trial_serving,
)
from app.serving.loadgen import benchmark_prompts, run_load, summarize
from app.serving.manager import (
    APP_NAME,
    ServeError,
    cluster_address,
    deploy,
    wait_engines_gone,
)
from app.tracking import log_step_metrics, log_table, start_run

# Deferred imports: matplotlib, mlflow, ray are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

POINT_KEYS = ("output_throughput", "request_throughput", "p50_ttft_ms", "p95_ttft_ms", "p95_tpot_ms",
              "p95_itl_ms", "p50_e2e_ms", "p95_e2e_ms", "completed", "failed")


@dataclass
class TrialResult:
    name: str
    serving: ServingConfig
    points: list[dict[str, Any]] = field(default_factory=list)
    deploy_seconds: float = 0.0
    error: str = ""

    @property
    def best(self) -> dict[str, Any] | None:
        """The level with the highest objective among those that meet the SLO."""
        ok = [p for p in self.points if p["slo_met"]]
        return max(ok, key=lambda p: p["score"]) if ok else None

    @property
    def score(self) -> float:
        return self.best["score"] if self.best else 0.0


def slo_violations(point: dict[str, Any], sw: ServeSweepConfig) -> list[str]:
    """Which SLO limits a load level broke (empty: it met the SLO). Failed requests break it too."""
    out = []
    for key, limit in (("p95_ttft_ms", sw.slo_p95_ttft_ms), ("p95_tpot_ms", sw.slo_p95_tpot_ms),
                       ("p95_e2e_ms", sw.slo_p95_e2e_ms)):
        if limit is not None and point[key] > limit:
            out.append(f"{key} {point[key]:.0f} > {limit:g}")
    if point["failed"]:
        out.append(f"{point['failed']:.0f} failed requests")
    return out


def score_point(point: dict[str, Any], sw: ServeSweepConfig) -> dict[str, Any]:
    broken = slo_violations(point, sw)
    return point | {"slo_met": not broken, "slo_broken": "; ".join(broken), "score": point[sw.objective]}


def changed_fields(s: ServingConfig, base: ServingConfig) -> dict[str, Any]:
    """Serving fields where ``s`` differs from ``base`` (the overrides that make a trial)."""
    a, b = s.model_dump(mode="json"), base.model_dump(mode="json")
    return {k: v for k, v in a.items() if k != "models" and b.get(k) != v}


def max_objective(t: TrialResult, sw: ServeSweepConfig) -> float:
    """The trial's highest throughput at any level, SLO or not (its saturation point)."""
    return max((p[sw.objective] for p in t.points), default=0.0)


def trial_overrides(serving: ServingConfig, cfg: ExperimentConfig) -> dict[str, Any]:
    """What a trial changes in the configured serving section (the model list aside)."""
    return changed_fields(serving, cfg.serving.model_copy(update={"models": serving.models}))


def pick_winner(trials: list[TrialResult]) -> TrialResult | None:
    """The trial with the highest score; ties go to the earlier trial (baseline first)."""
    scored = [t for t in trials if t.best is not None]
    return max(scored, key=lambda t: t.score) if scored else None


def requests_for(concurrency: int, sw: ServeSweepConfig) -> int:
    return max(sw.min_requests, sw.requests_per_level * concurrency)


def sweep_trials(cfg: ExperimentConfig) -> list[tuple[str, ServingConfig]]:
    """The serve sweep's trials as (name, full serving section), each validated like the section.

    Raises ServeError naming the trial and field for a value the serving section would reject (the
    config checked each value alone; a combination can still break a rule across fields).
    """
    sw = cfg.serve_sweep
    model = sw.model or cfg.serving.models[0]
    base = cfg.serving.model_dump() | {"models": [model]}
    wanted: list[tuple[str, dict[str, Any]]] = []
    if sw.include_vllm_defaults:
        wanted.append(("vllm-defaults", VLLM_DEFAULTS))
    if sw.include_current:
        wanted.append(("current", {}))
    for t in sw.trials:
        wanted.append((trial_name(t) or "current", t))
    keys = list(sw.grid)
    for combo in itertools.product(*(sw.grid[k] for k in keys)) if keys else []:
        t = dict(zip(keys, combo))
        wanted.append((trial_name(t), t))
    out: list[tuple[str, ServingConfig]] = []
    seen: dict[str, str] = {}
    for name, overrides in wanted:
        try:
            serving = trial_serving(base, name, overrides)
        except ValueError as exc:  # the config checked each value alone; a combination broke a rule
            raise ServeError(str(exc)) from None
        key = serving.model_dump_json()
        if key in seen:  # the same setting twice (e.g. a trial equal to the current section)
            continue
        seen[key] = name
        out.append((name, serving))
    return out


def measure(url: str, model: str, sw: ServeSweepConfig, headers: dict[str, str], seed: int,
            progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Warm up, then one load run per concurrency level; returns the scored points."""
    prompts = benchmark_prompts(64, seed=seed)
    if sw.warmup_requests:
        asyncio.run(run_load(url, model, prompts, min(sw.warmup_requests, 4), sw.warmup_requests,
                             sw.max_tokens, headers, seed=seed + 1, timeout_s=sw.request_timeout_s))
    points = []
    for c in sw.concurrencies:
        n = requests_for(c, sw)
        results, wall = asyncio.run(run_load(url, model, prompts, c, n, sw.max_tokens, headers, seed=seed + c,
                                             timeout_s=sw.request_timeout_s))
        summary = summarize(results, wall)
        point = score_point({"concurrency": c, "requests": n, **{k: summary[k] for k in POINT_KEYS}}, sw)
        points.append(point)
        errors = sorted({r.error for r in results if not r.ok})
        progress(f"  c={c:>3}: {point['output_throughput']:7.1f} tok/s, p95 TTFT {point['p95_ttft_ms']:6.0f} ms, "
                 f"p95 TPOT {point['p95_tpot_ms']:5.0f} ms, p95 E2E {point['p95_e2e_ms']:6.0f} ms"
                 + ("" if point["slo_met"] else f"  [SLO: {point['slo_broken']}]")
                 + (f"  errors: {errors[:2]}" if errors else ""))
    return points


def combine_rounds(rounds: list[TrialResult], sw: ServeSweepConfig) -> TrialResult:
    """One result from several deployments of the same trial: figures averaged per load level.

    Failed requests add up; the spread of the objective across rounds is kept (``*_min``/``*_max``).
    """
    first = rounds[0]
    measured = [r for r in rounds if r.points]
    out = TrialResult(first.name, first.serving, error="; ".join(r.error for r in rounds if r.error))
    if not measured:
        return out
    out.deploy_seconds = sum(r.deploy_seconds for r in measured) / len(measured)
    for i, p0 in enumerate(measured[0].points):
        same = [r.points[i] for r in measured]
        point: dict[str, Any] = {"concurrency": p0["concurrency"], "requests": sum(p["requests"] for p in same),
                                 "rounds": len(same)}
        for key in POINT_KEYS:
            vals = [p[key] for p in same]
            point[key] = sum(vals) if key in ("completed", "failed") else sum(vals) / len(vals)
        point[f"{sw.objective}_min"] = min(p[sw.objective] for p in same)
        point[f"{sw.objective}_max"] = max(p[sw.objective] for p in same)
        out.points.append(score_point(point, sw))
    return out


def run_trial(name: str, serving: ServingConfig, cfg: ExperimentConfig,
              progress: Callable[[str], None]) -> TrialResult:
    result = TrialResult(name, serving)
    progress(f"trial {name}")
    try:
        info = deploy(cfg.paths.resolved_home(), serving, progress, replace=True)
    except ServeError as exc:  # a setting that cannot start or garbles is a result, not the end of the sweep
        result.error = str(exc)[:2000]
        progress(f"  could not deploy: {result.error[:300]}")
        return result
    result.deploy_seconds = info["deploy_seconds"]
    result.points = measure(endpoint.base_url(serving), serving.models[0], cfg.serve_sweep, endpoint.headers(serving), cfg.seed,
                            progress)
    return result


def trial_status(t: TrialResult) -> str:
    """measured, or why not: a setting that garbles output failed, it was never fast."""
    if t.points:
        return "measured"
    return "failed the correctness gate" if "correctness gate failed" in t.error else "failed to deploy"


def tuned_serving(cfg: ExperimentConfig, winner: TrialResult) -> ServingConfig:
    """The configured serving section with the winner's tuned fields (all models kept)."""
    tuned = trial_overrides(winner.serving, cfg)
    if len(cfg.serving.models) > 1 and tuned.get("cpu_threads_bind") not in (None, "split", "auto", "nobind"):
        # Measured on one model: pinning several engines to the same cores slows all of them.
        tuned.pop("cpu_threads_bind")
    return ServingConfig.model_validate(cfg.serving.model_dump() | tuned)


def plot(trials: list[TrialResult], sw: ServeSweepConfig, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for t in trials:
        if not t.points:
            continue
        xs = [p["concurrency"] for p in t.points]
        ax1.plot(xs, [p[sw.objective] for p in t.points], marker="o", label=t.name)
        ax2.plot([p["p95_e2e_ms"] for p in t.points], [p[sw.objective] for p in t.points], marker="o", label=t.name)
    ax1.set(xscale="log", xlabel="concurrent requests", ylabel=sw.objective.replace("_", " "),
            title="Continuous batching: throughput vs concurrency")
    ax2.set(xlabel="p95 end-to-end latency (ms)", ylabel=sw.objective.replace("_", " "),
            title="Throughput vs p95 latency")
    if sw.slo_p95_e2e_ms:
        ax2.axvline(sw.slo_p95_e2e_ms, color="grey", linestyle="--", label="E2E SLO")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_sweep(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Deploy and load every trial; write and log the best setting under the SLO."""
    import mlflow
    import ray

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    sw = cfg.serve_sweep
    trials = sweep_trials(cfg)
    model = trials[0][1].models[0]
    stored = model_store(cfg).get(model)  # a clear error before any deployment when it is missing
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = cfg.paths.resolved_home() / "reports" / "serve_sweep" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(f"serve sweep: {len(trials)} trials of {model}, levels {sw.concurrencies}, results in {out_dir}")

    address = cluster_address(cfg, progress)
    if not ray.is_initialized():
        cluster.join_quietly(address)
    tags = {"rerun_of": rerun_of} if rerun_of else {}
    results: list[TrialResult] = []
    with start_run(cfg, "serve_sweep", config_path, inputs={"model": model_fingerprint(stored)}, tags=tags) as run:
        per_round: dict[str, list[TrialResult]] = {name: [] for name, _ in trials}
        for rnd in range(1, sw.rounds + 1):
            for i, (name, serving) in enumerate(trials, 1):
                diff = trial_overrides(serving, cfg)
                progress(f"[round {rnd}/{sw.rounds}, trial {i}/{len(trials)}] {name}: "
                         f"{json.dumps(diff) if diff else 'the serving section as configured'}")
                per_round[name].append(run_trial(name, serving, cfg, progress))
        for name, serving in trials:
            t = combine_rounds(per_round[name], sw)
            results.append(t)
            with mlflow.start_run(run_name=f"trial-{name}"[:250], nested=True):
                mlflow.set_tags({"stage": "serve_sweep.trial", "trial": name, "status": trial_status(t),
                                 "error": t.error[:500]})
                mlflow.log_params({f"serving.{k}": json.dumps(v) for k, v in
                                   redact(serving.model_dump(mode="json")).items()})
                for p in t.points:
                    log_step_metrics({k: p[k] for k in POINT_KEYS} | {"slo_met": float(p["slo_met"])},
                                     step=p["concurrency"])
                log_step_metrics({"best_under_slo": t.score, "deploy_seconds": t.deploy_seconds}, step=0)
                rows = [{"round": r, **p} for r, tr in enumerate(per_round[name], 1) for p in tr.points]
                if rows:
                    log_table(rows, "rounds.json")

        from ray import serve
        serve.delete(APP_NAME, _blocking=True)  # the sweep leaves no trial deployed
        wait_engines_gone()

        rows = [{"trial": t.name, **p} for t in results for p in t.points]
        (out_dir / "points.json").write_text(json.dumps(rows, indent=2))
        if rows:
            log_table(rows, "sweep/points.json")
        plot_path = plot(results, sw, out_dir / "sweep.png")
        mlflow.log_artifact(str(plot_path), "sweep")

        winner = pick_winner(results)
        baseline = next((t for t in results if t.name == "vllm-defaults"), None)
        summary: dict[str, Any] = {
            "run_id": run.info.run_id, "model": model, "out_dir": str(out_dir),
            "slo": {k: v for k, v in sw.model_dump().items() if k.startswith("slo_")},
            "trials": [{"name": t.name, "best_under_slo": round(t.score, 2),
                        "at_concurrency": t.best["concurrency"] if t.best else None,
                        "max_throughput": round(max_objective(t, sw), 2),
                        "best_range": ([round(t.best[f"{sw.objective}_min"], 2), round(t.best[f"{sw.objective}_max"], 2)]
                                       if t.best and f"{sw.objective}_min" in t.best else None),
                        "deploy_seconds": t.deploy_seconds, "status": trial_status(t),
                        "error": t.error[:200]} for t in results],
        }
        if winner is None:
            summary["winner"] = None
            summary["message"] = "no trial met the SLO at any load level: loosen serve_sweep.slo_* or add lower levels"
            mlflow.set_tag("winner", "none")
            return summary
        tuned = tuned_serving(cfg, winner)
        overrides = changed_fields(tuned, cfg.serving)
        serve_cfg = serve_config_dict(cfg.paths.home, tuned)
        (out_dir / "tuned_serve_config.yaml").write_text(
            f"# Best setting of serve sweep run {run.info.run_id} ({winner.name}); SLO {summary['slo']}.\n"
            + yaml.safe_dump(serve_cfg, sort_keys=False))
        (out_dir / "tuned_serving.yaml").write_text(yaml.safe_dump({"serving": redact(tuned.model_dump(mode="json"))},
                                                                   sort_keys=False))
        mlflow.log_artifact(str(out_dir / "tuned_serve_config.yaml"), "sweep")
        mlflow.log_artifact(str(out_dir / "tuned_serving.yaml"), "sweep")
        mlflow.log_params({f"tuned.{k}": json.dumps(v) for k, v in overrides.items()} or {"tuned": "as configured"})
        metrics = {"best_under_slo": winner.score}
        if baseline is not None and baseline.score > 0:
            metrics["speedup_vs_vllm_defaults"] = winner.score / baseline.score
        if baseline is not None and max_objective(baseline, sw) > 0:
            metrics["max_throughput_vs_vllm_defaults"] = max_objective(winner, sw) / max_objective(baseline, sw)
        log_step_metrics(metrics, step=0)
        mlflow.set_tag("winner", winner.name)
        summary.update({
            "winner": winner.name, "tuned_overrides": overrides,
            "best_under_slo": round(winner.score, 2), "at_concurrency": winner.best["concurrency"],
            "vllm_defaults_under_slo": round(baseline.score, 2) if baseline else None,
            "speedup_vs_vllm_defaults": (round(metrics["speedup_vs_vllm_defaults"], 3)
                                         if "speedup_vs_vllm_defaults" in metrics else None),
            "max_throughput_vs_vllm_defaults": (round(metrics["max_throughput_vs_vllm_defaults"], 3)
                                                if "max_throughput_vs_vllm_defaults" in metrics else None),
            "tuned_serve_config": str(out_dir / "tuned_serve_config.yaml"),
        })
        return summary


__all__ = ["run_sweep", "pick_winner", "slo_violations", "score_point", "changed_fields", "trial_status"]
