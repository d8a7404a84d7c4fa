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
from app.stages import PIPELINE_SUMMARY, REGISTRY, run_pipeline


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def job_main(name: str, argv: list[str] | None = None) -> None:
    """Run the registered stage ``name`` (or ``"pipeline"``, the main job) as a job."""
    sys.stdout.reconfigure(line_buffering=True)  # progress visible live in `ray job logs` and pipes
    stage: Callable[..., Any] = run_pipeline if name == "pipeline" else REGISTRY[name].run
    parser = argparse.ArgumentParser(description=PIPELINE_SUMMARY if name == "pipeline" else REGISTRY[name].summary)
    parser.add_argument("--config", "-c", type=Path, help="experiment YAML (default: built-in defaults)")
    parser.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set training.lr=1e-4 (repeatable)")
    args = parser.parse_args(argv)
    result = report_errors(lambda: stage(load_config(args.config, args.set), args.config), _fail)
    print(json.dumps(result, indent=2, default=str))
