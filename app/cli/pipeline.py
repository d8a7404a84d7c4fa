"""``app run`` and ``app rerun``: the main job, and a tracked stage run again with its own config."""

from __future__ import annotations

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
def run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The main job: every stage built so far, in order (same as jobs/pipeline.py)."""
    from app.stages import run_pipeline

    cfg = load(config, set_)
    for summary in run_pipeline(cfg, config):
        console.print_json(data=summary)
