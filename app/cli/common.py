"""What every command group shares: the console, the --config/--set options, loading the config,
and the one error handler (:func:`app.errors.report_errors`, as the job entry uses it)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from app.config import ExperimentConfig, load_config
from app.errors import report_errors

# Rich wraps tables at 80 columns when output is not a terminal (CI logs, pipes): too narrow
# for run ids and paths.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Experiment YAML (default: built-in defaults).")]
HostOpt = Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: all).")]
PortOpt = Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override, e.g. --set training.lr=1e-4 (repeatable).")]


def fail(message: str, code: int = 1) -> NoReturn:
    # Messages quote user input and lists ("['a']"): never read them as Rich markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the app's own errors (:class:`app.errors.AppError`) into a clear message and a non-zero
    exit, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return report_errors(lambda: fn(*args, **kwargs), fail)

    return wrapper


def load(config: Path | None, overrides: list[str] | None) -> ExperimentConfig:
    return load_config(config, overrides or [])


def say(message: str) -> None:
    """A stage's progress line, printed as is (no Rich markup or highlighting)."""
    console.print(message, highlight=False, markup=False)


def run_stage(name: str, config: Path | None, overrides: list[str] | None) -> dict[str, Any]:
    """Run the registered stage ``name`` with the loaded config, its progress on the console."""
    from app.stages import (
        REGISTRY,  # every stage's modules: loaded only when a command runs one
    )

    return REGISTRY[name].run(load(config, overrides), config, progress=say)
