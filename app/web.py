"""What the web apps people use (dataset review, human evaluation) share: the FastAPI app with its
settings, JSON errors, HTML escaping, the HTML document around a page, and the uvicorn runner.

Every error is answered as ``{"error": message}``; everything a page shows goes through :func:`h`.

This module imports nothing from the app: every stage may use it.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

# Deferred imports: uvicorn is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


def new_app(title: str) -> FastAPI:
    """A FastAPI app with the common settings: API docs under /api, no ReDoc."""
    return FastAPI(title=title, docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")


def json_error(status_code: int, message: str) -> JSONResponse:
    """The JSON answer to a refused request: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status_code)


def answer_errors(app: FastAPI, error: type[Exception], status_of: Callable[[Exception], int] = lambda _exc: 400) -> None:
    """Answer every ``error`` an endpoint raises with :func:`json_error` (status ``status_of(exc)``, 400 by default)."""

    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return json_error(status_of(exc), str(exc))

    app.add_exception_handler(error, handler)


def serve_app(app: FastAPI, host: str, port: int) -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn  # deferred: only a server needs it, and importing it slows every CLI start

    uvicorn.run(app, host=host, port=port, log_level="info")


def h(value: Any) -> str:
    """``value`` as HTML-escaped text (quotes too, so it is safe in attributes); None is empty."""
    return escape("" if value is None else str(value))


def html_document(title: str, body: str, *, css: str = "", script: str = "") -> str:
    """A whole HTML page: ``body`` with the page's ``css`` and (when given) ``script``."""
    script_html = f"<script>{script}</script>" if script else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{h(title)}</title><style>{css}</style></head>
<body>{body}{script_html}</body></html>"""


__all__ = ["new_app", "json_error", "answer_errors", "serve_app", "h", "html_document"]
