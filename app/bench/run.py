"""``app bench all``: every benchmark of the running (or deployed here) endpoint, then the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from app.bench.load import BenchError, load_test, served_models
from app.config import ExperimentConfig


def run_all(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Load profiles (``bench.profiles``), the sweep, the comparisons, the report, in that order. The
    project's endpoint is deployed for the run when it is not up (and removed after); bench.target=ab
    needs the experiment running (`app ab start`), and bench.url a running endpoint."""
    from app.bench.compare import compare
    from app.bench.report import report
    from app.bench.sweep import sweep
    from app.serving.manager import down, ensure_served

    deployed = False
    if cfg.bench.url is None and cfg.bench.target == "direct":
        deployed = ensure_served(cfg, served_models(cfg), "the benchmarks", progress)
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
        out["report"] = report(cfg, config_path, rerun_of=rerun_of, progress=progress)
    finally:
        if deployed:
            progress("removing the Serve app deployed for the benchmarks")
            down(cfg)
    return {"report": out["report"], "loads": {p: r["out_dir"] for p, r in out["loads"].items()},
            "sweep": out["sweep"]["out_dir"], "compare": (out.get("compare") or {}).get("out_dir")}
