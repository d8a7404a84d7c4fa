"""The one error model: every error a user can cause or fix is an :class:`AppError`.

Each stage derives its errors from it (``DatasetError``, ``TrainingError``, ...); the job entry
(``jobs/*.py``) and the CLI catch it in one place, :func:`report_errors`, and print one clean line
and exit non-zero instead of a traceback. Anything else is a bug and keeps its traceback.

This module imports nothing from the app: every layer may use it.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")


class AppError(Exception):
    """A problem the user can fix; ``str(exc)`` is the message, ``exit_code`` the process status."""

    exit_code: int = 1

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(AppError, ValueError):
    """A configuration that cannot be used; the message names each field and the rule it broke."""

    exit_code = 2


def report_errors(call: Callable[[], T], report: Callable[[str, int], Any]) -> T:
    """``call()``; an :class:`AppError` goes to ``report(message, exit_code)``, which must exit.

    The CLI and the job entry share this, so both catch the same errors and exit with the same code.
    """
    try:
        return call()
    except AppError as exc:
        report(exc.message, exc.exit_code)
        raise SystemExit(exc.exit_code) from None  # `report` should not return; never fall through
