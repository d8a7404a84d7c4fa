"""``app bench all``: every benchmark of the running (or deployed here) endpoint, then the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from app.bench.load import BenchError, load_test, served_models
from app.config import ExperimentConfig


def run_all(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Load profiles (``bench.profiles``), the sweep, the comparisons on the endpoint, then the suites
    (``bench.suites.run``: comparisons that start their own servers), then the report. The project's
    endpoint is deployed for the run when it is not up (and removed before the suites); bench.target=ab
    needs the experiment running (`app ab start`), and bench.url a running endpoint. Suites that need
    the machine are skipped (reason in the report) while an endpoint this run did not deploy is up."""
    from app.bench.compare import compare
    from app.bench.report import report
    from app.bench.suites import run_suites
    from app.bench.sweep import sweep
    from app.serving.manager import down, ensure_served

    deployed = False
    if cfg.bench.url is None and cfg.bench.target == "direct":
        models = served_models(cfg)
        serving = cfg.serving.model_copy(update={"models": models})
        deployed = ensure_served(cfg.model_copy(update={"serving": serving}), models, "the benchmarks", progress)
    out: dict[str, Any] = {"loads": {}}
    try:
        for profile in cfg.bench.profiles:
            run_cfg = cfg.model_copy(deep=True)
            run_cfg.bench.load.profile = profile
            progress(f"== load profile {profile} ==")
            out["loads"][profile] = load_test(run_cfg, config_path, rerun_of=rerun_of, progress=progress)
        progress("== concurrency sweep ==")
        out["sweep"] = sweep(cfg, config_path, rerun_of=rerun_of, progress=progress)
        progress("== comparisons ==")
        try:
            out["compare"] = compare(cfg, config_path, rerun_of=rerun_of, progress=progress)
        except BenchError as exc:
            if "nothing to compare" not in str(exc):
                raise
            progress(f"comparisons skipped: {exc}")
    finally:
        if deployed:
            progress("removing the Serve app deployed for the benchmarks")
            down(cfg)
        elif cfg.bench.release_endpoint:
            progress("removing the running Serve app (bench.release_endpoint): the suites need the machine")
            down(cfg)
    if cfg.bench.suites.run:
        progress("== suites: comparisons measured by their own stage or benchmark ==")
        out["suites"] = run_suites(cfg, config_path, rerun_of=rerun_of, progress=progress)
    out["report"] = report(cfg, config_path, rerun_of=rerun_of, progress=progress)
    # The report's run stands for the stage (each part has its own run, nested under the same parent).
    return {"mlflow_run_id": out["report"].get("mlflow_run_id"), "report": out["report"], "loads": {p: r["out_dir"] for p, r in out["loads"].items()},
            "sweep": out["sweep"]["out_dir"], "compare": (out.get("compare") or {}).get("out_dir"),
            "suites": (out.get("suites") or {}).get("out_dir")}
