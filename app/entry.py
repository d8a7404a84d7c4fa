"""The shared body of ``jobs/*.py``: parse --config/--set, validate, call one stage function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from app.config import ConfigError, load_config


def job_main(stage: Callable[..., Any], argv: list[str] | None = None) -> None:
    from app.data.schema import DatasetError
    from app.data.splits import LeakageError
    from app.model_store import ModelStoreError
    from app.serving.manager import ServeError
    from app.tracking import TrackingError
    from app.train.checkpoint import CheckpointError
    from app.train.run import TrainingError

    sys.stdout.reconfigure(line_buffering=True)  # progress visible live in `ray job logs` and pipes
    parser = argparse.ArgumentParser(description=(stage.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--config", "-c", type=Path, help="experiment YAML (default: built-in defaults)")
    parser.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set training.lr=1e-4 (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        result = stage(cfg, args.config)
    except (ModelStoreError, TrackingError, ServeError, DatasetError, LeakageError, TrainingError,
            CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result, indent=2, default=str))
