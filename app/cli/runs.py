"""``app runs ...``: tracked runs, listed and compared."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from app.cli.common import ConfigOpt, SetOpt, console, handled, load

runs_app = typer.Typer(help="Tracked runs: list and compare.", no_args_is_help=True)


@runs_app.command("list")
@handled
def runs_list(config: ConfigOpt = None, set_: SetOpt = None, limit: int = typer.Option(20, min=1)) -> None:
    """Recent runs of the configured experiment."""
    import mlflow

    from app.tracking import HASH_TAG, STAGE_TAG, connect

    cfg = load(config, set_)
    connect(cfg)
    df = mlflow.search_runs(experiment_names=[cfg.tracking.experiment or cfg.name], max_results=limit)
    table = Table("run id", "name", "stage", "status", "config hash", "started")
    for _, r in df.iterrows():
        table.add_row(r["run_id"], str(r.get("tags.mlflow.runName", "")), str(r.get(f"tags.{STAGE_TAG}", "")),
                      r["status"], str(r.get(f"tags.{HASH_TAG}", ""))[:12], str(r["start_time"])[:19])
    console.print(table)


@runs_app.command("compare")
@handled
def runs_compare(run_ids: list[str], config: ConfigOpt = None, set_: SetOpt = None,
                 out: Optional[Path] = typer.Option(None, help="Plot file (default: <home>/reports/compare-<ids>.png)."),
                 all_params: bool = typer.Option(False, help="Show every param, not only those that differ.")) -> None:
    """Side-by-side table of runs (config, params that differ, metrics) and a plot of their metrics."""
    from app.runs import compare_runs, plot_comparison
    from app.tracking import connect

    cfg = load(config, set_)
    connect(cfg)
    comp = compare_runs(run_ids, all_params=all_params)
    table = Table("", *comp.header)
    for row in comp.rows:
        table.add_row(*row)
    console.print(table)
    target = out or cfg.paths.resolved_home() / "reports" / f"compare-{'-'.join(h for h in comp.header)}.png"
    console.print(f"plot: {plot_comparison(comp, target)}")
