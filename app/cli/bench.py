"""``app bench ...``: Locust load profiles and concurrency sweeps of the running endpoint (app.bench)."""

from __future__ import annotations

from typing import Optional

import typer

from app.cli.common import ConfigOpt, SetOpt, console, handled, load, run_stage, say

bench_app = typer.Typer(help="Performance benchmarks: Locust load profiles, concurrency sweeps and "
                        "comparisons of the running endpoint; suites of comparisons that start their own servers.", no_args_is_help=True)


@bench_app.command("load")
@handled
def bench_load(config: ConfigOpt = None, set_: SetOpt = None,
               profile: Optional[str] = typer.Option(None, help="steady, step, stress or soak (default: "
                                                     "bench.load.profile).")) -> None:
    """One bounded headless Locust run: LLM latency (TTFT/TPOT/ITL/E2E), errors, memory, the answer after."""
    from app.bench.load import load_test

    overrides = list(set_ or []) + ([f"bench.load.profile={profile}"] if profile else [])
    result = load_test(load(config, overrides), config, progress=say)
    console.print_json(data={k: result[k] for k in ("figures", "after", "failures", "memory", "peak_rss_mib",
                                                    "loadgen_cpu_percent_mean", "stopped", "out_dir",
                                                    "mlflow_run_id") if k in result})


@bench_app.command("sweep")
@handled
def bench_sweep(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Concurrency sweep until saturation: p50/p90/p95/p99, throughput, goodput, peak memory per level."""
    from app.bench.sweep import sweep
    from app.tracking import finite

    result = sweep(load(config, set_), config, progress=say)
    console.print_json(data=finite({k: v for k, v in result.items() if k != "points"}))


@bench_app.command("compare")
@handled
def bench_compare(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Pairs of served models (and the A/B endpoint vs direct), interleaved rounds, ratios with their spread."""
    from app.bench.compare import compare
    from app.tracking import finite

    result = compare(load(config, set_), config, progress=say)
    console.print_json(data=finite({"pairs": [{k: p[k] for k in ("name", "baseline", "candidate", "ratios")}
                                              for p in result["pairs"]], "out_dir": result["out_dir"],
                                    "mlflow_run_id": result["mlflow_run_id"]}))


@bench_app.command("suites")
@handled
def bench_suites(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Comparisons run by the stage or benchmark that owns them (bench.suites.run): fine-tuned vs base quality,
    tuned vs default serving, Ray Serve vs plain vLLM, vLLM vs transformers, INT4 vs bf16."""
    from app.bench.suites import run_suites
    from app.tracking import finite

    result = run_suites(load(config, set_), config, progress=say)
    console.print_json(data=finite({"suites": {n: {k: v for k, v in r.items() if k != "rows"} | {
        "rows": [{k: row[k] for k in ("comparison", "figure", "baseline", "candidate", "ratio", "spread",
                                      "beyond_noise")} for row in r["rows"]]} for n, r in result["suites"].items()},
        "out_dir": result["out_dir"], "mlflow_run_id": result["mlflow_run_id"]}))


@bench_app.command("report")
@handled
def bench_report(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The latest load runs, sweep and comparisons: targets, rule-based recommendations, plots (MD + HTML)."""
    from app.bench.report import report

    result = report(load(config, set_), config, progress=say)
    console.print_json(data={k: result[k] for k in ("targets", "recommendations", "out_dir", "mlflow_run_id")})


@bench_app.command("all")
@handled
def bench_all(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Every load profile (bench.profiles), the sweep, the comparisons, the suites and the report, as
    jobs/benchmark.py."""
    console.print_json(data=run_stage("benchmark", config, set_))


__all__ = ["bench_app"]
