"""``app run`` and ``app rerun``: the main job, and a tracked stage run again with its own config."""

from __future__ import annotations

import json
from typing import Optional

import typer

from app.cli.common import ConfigOpt, SetOpt, console, err_console, fail, handled, load

pipeline_app = typer.Typer()  # its commands are mounted at the top level: `app run`, `app rerun`


@pipeline_app.command("rerun")
@handled
def rerun(run_id: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run a tracked stage again with the identical config (read back from the run's artifacts).

    --config/--set here only say where the tracking server is; the stage uses the run's own config.
    """
    from app.stages import STAGES
    from app.tracking import connect, git_state, load_run_config

    connect(load(config, set_))
    cfg, tags, config_file = load_run_config(run_id)
    stage = tags["app.stage"]
    if stage not in STAGES:
        fail(f"run {run_id} is of stage {stage!r}, which this version cannot run (known: {', '.join(STAGES)})")
    now = git_state()["commit"]
    if tags.get("git.commit") not in (None, "unknown", now):
        err_console.print(f"[yellow]note:[/] run {run_id} was made at commit {tags['git.commit'][:10]}, "
                          f"this checkout is at {now[:10]}")
    summary = STAGES[stage](cfg, config_file, rerun_of=run_id)
    console.print_json(data=summary)


@pipeline_app.command("run")
@handled
def run(config: ConfigOpt = None, set_: SetOpt = None,
        from_stage: Optional[str] = typer.Option(None, "--from", help="Start at this stage (it re-runs)."),
        to_stage: Optional[str] = typer.Option(None, "--to", help="Stop after this stage."),
        only: Optional[list[str]] = typer.Option(None, "--only", help="Run only this stage (repeatable)."),
        force: Optional[list[str]] = typer.Option(None, "--force", help="Re-run this stage even when its record "
                                                  "is current (repeatable).")) -> None:
    """The main job: the stages in order under one MLflow parent run, unchanged stages reused (as
    jobs/pipeline.py)."""
    from app.pipeline import run_pipeline
    from app.tracking import finite

    summary = run_pipeline(load(config, set_), config, from_stage=from_stage, to_stage=to_stage, only=only,
                           force=force)
    console.print_json(json.dumps(finite(summary), default=str))
