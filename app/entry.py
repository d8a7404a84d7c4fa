"""The shared body of ``jobs/*.py``: parse --config/--set, validate, call one stage function.

Errors are reported as the CLI reports them (:func:`app.errors.report_errors`): one line,
``error: <message>``, on stderr and a non-zero exit (2 for a config the schema rejects).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from app.config import load_config
from app.errors import report_errors
from app.stages import REGISTRY


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def job_main(name: str, argv: list[str] | None = None) -> None:
    """Run the registered stage ``name`` (or ``"pipeline"``, the main job) as a job."""
    sys.stdout.reconfigure(line_buffering=True)  # progress visible live in `ray job logs` and pipes
    if name == "pipeline":
        from app.pipeline import PIPELINE, PIPELINE_SUMMARY, run_pipeline

        stage: Callable[..., Any] = run_pipeline
        description = PIPELINE_SUMMARY
    else:
        stage, description = REGISTRY[name].run, REGISTRY[name].summary
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", "-c", type=Path, help="experiment YAML (default: built-in defaults)")
    parser.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set training.lr=1e-4 (repeatable)")
    if name == "pipeline":
        parser.add_argument("--from", dest="from_stage", choices=PIPELINE, help="start here (this stage re-runs)")
        parser.add_argument("--to", dest="to_stage", choices=PIPELINE, help="stop after this stage")
        parser.add_argument("--only", action="append", choices=PIPELINE, help="run only this stage (repeatable)")
        parser.add_argument("--force", action="append", choices=PIPELINE,
                            help="re-run this stage even when its record is current (repeatable)")
    args = parser.parse_args(argv)
    kw = {k: getattr(args, k) for k in ("from_stage", "to_stage", "only", "force")} if name == "pipeline" else {}
    result = report_errors(lambda: stage(load_config(args.config, args.set), args.config, **kw), _fail)
    print(json.dumps(result, indent=2, default=str))
