"""What the web apps people use (dataset review, human evaluation) share: the FastAPI app with its
settings and request limits, logging in against the accounts table, JSON errors, HTML escaping, the
HTML document around a page, and the uvicorn runner.

Every app made by :func:`new_app` refuses, before any handler runs, a body over its limit (413) and a
write (POST, PUT, PATCH, DELETE) sent by a page of another origin (403: the ``Origin`` header names
another host, or the browser says ``Sec-Fetch-Site: cross-site``), so a page elsewhere cannot write
with a reviewer's session cookie. :class:`WebAuth` adds the login routes and the per-request check of
the session (cookie, or ``Authorization: Bearer <session>`` for scripts) and of the account's role.

Every error is answered as ``{"error": message}``; everything a page shows goes through :func:`h`.

This module imports only the accounts store (shared layer) from the app: every stage may use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from html import escape
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.accounts import AccountError, AccountStore, LoginFailed, User

# Deferred imports: uvicorn is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


MAX_BODY_BYTES = 1_000_000
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def new_app(title: str, max_body_bytes: int = MAX_BODY_BYTES, dependencies: list | None = None) -> FastAPI:
    """A FastAPI app with the common settings (API docs under /api, no ReDoc) and :class:`RequestLimits`;
    ``dependencies`` run before every route (a login check)."""
    app = FastAPI(title=title, docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json",
                  dependencies=dependencies)
    app.add_middleware(RequestLimits, max_body_bytes=max_body_bytes)
    app.add_exception_handler(StarletteHTTPException, http_error)
    return app


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (unknown path 404, wrong method 405, a body that cannot be
    parsed 400) as ``{"error": message}`` too."""
    message = str(exc.detail)
    if exc.status_code == 405 and (exc.headers or {}).get("Allow"):
        message = f"method {request.method} is not allowed on {request.url.path}; allowed: {exc.headers['Allow']}"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


class RequestLimits:
    """Pure ASGI middleware: bodies over ``max_body_bytes`` get 413 and cross-origin writes 403, before
    the app sees them (the body is read up to the limit and replayed unchanged)."""

    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") not in UNSAFE_METHODS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = _cross_origin(headers)
        if problem:
            return await _refuse(send, 403, problem)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _refuse(send, 413, f"request body is {declared} bytes; the limit is {self.max_body_bytes}")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await _refuse(send, 413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return await self.app(scope, replaying(b"".join(chunks), receive), send)


def replaying(raw: bytes, receive: Callable) -> Callable:
    """An ASGI ``receive`` that gives a body already read (``raw``) once, then defers to ``receive``
    (for the disconnect message): middleware that reads a body to check it hands the app this."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


def _cross_origin(headers: dict[str, str]) -> str | None:
    if headers.get("sec-fetch-site") == "cross-site":
        return "cross-site write refused (Sec-Fetch-Site: cross-site)"
    origin = headers.get("origin")
    if origin and origin != "null":
        host = headers.get("host", "")
        if urlsplit(origin).netloc.lower() != host.lower():
            return f"cross-origin write refused: Origin {origin} is not this server ({host})"
    elif origin == "null":
        return "cross-origin write refused: Origin null"
    return None


async def _refuse(send: Callable, status: int, message: str) -> None:
    payload = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


async def read_json(request: Request) -> Any:
    """The request's JSON body; ValueError when it is not JSON, nests too deeply for the parser, or holds
    text that is not Unicode (a lone surrogate escape such as ``"\\ud800"``, which no database stores)."""
    try:
        body = await request.json()
    except RecursionError:
        raise ValueError("the JSON body nests too deeply") from None
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            value.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return body


LOGIN_FIRST = ("log in first: POST /api/login {name, password}, then send the session as "
               "'Authorization: Bearer <session>'")


def session_id(request: Request, cookie: str) -> str:
    """The session id a request carries: ``Authorization: Bearer <id>`` (scripts), else the ``cookie`` (pages)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(cookie, "")


class NotLoggedIn(Exception):
    """No valid session: 401 for the API, the login page for a page."""


class Forbidden(Exception):
    """Logged in, but the account lacks the role: 403."""


class WebAuth:
    """Logging in to a web app with an account (app.accounts) that has ``role`` (or admin).

    Routes it adds: ``GET /login`` (form), ``POST /login`` (form -> session cookie, back to the page),
    ``POST /api/login`` ``{name, password}`` -> ``{"session", "user", "roles"}`` (401 on failure),
    ``POST /logout`` and ``POST /api/logout``. :meth:`user` is the check every route calls.
    """

    def __init__(self, accounts: AccountStore, role: str, cookie: str, title: str):
        self.accounts, self.role, self.cookie, self.title = accounts, role, cookie, title

    def session_id(self, request: Request) -> str:
        return session_id(request, self.cookie)

    def refusal(self, request: Request) -> JSONResponse | None:
        """The 401 or 403 answer :meth:`user` leads to for ``request``, or None when it is logged in with
        the role: for a handler that answers before the login check runs (a body that fails to parse)."""
        try:
            self.user(request)
        except NotLoggedIn:
            return json_error(401, LOGIN_FIRST)
        except Forbidden as exc:
            return json_error(403, str(exc))
        return None

    def user(self, request: Request) -> User:
        """The logged-in account of ``request``; NotLoggedIn or Forbidden otherwise."""
        user = self.accounts.session_user(self.session_id(request))
        if user is None:
            raise NotLoggedIn()
        if not user.can(self.role):
            raise Forbidden(f"account {user.name!r} lacks the {self.role} role")
        return user

    def login(self, name: Any, password: Any) -> tuple[User, str]:
        user = self.accounts.authenticate(name, password)
        if not user.can(self.role):
            raise Forbidden(f"account {user.name!r} lacks the {self.role} role")
        return user, self.accounts.open_session(user)

    def mount(self, app: FastAPI, css: str = "") -> None:
        """Add the login routes and the 401/403 answers to ``app``."""

        @app.exception_handler(NotLoggedIn)
        async def _not_logged_in(request: Request, _exc: NotLoggedIn) -> Any:
            if request.url.path.startswith("/api/") or request.method != "GET":
                return json_error(401, LOGIN_FIRST)
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)

        @app.exception_handler(Forbidden)
        async def _forbidden(_request: Request, exc: Forbidden) -> Any:
            return json_error(403, str(exc))

        @app.post("/api/login")
        async def api_login(request: Request) -> Any:
            try:
                body = await read_json(request)
            except ValueError:
                return json_error(400, "request body must be a JSON object {name, password}")
            if not isinstance(body, dict):
                return json_error(400, "request body must be a JSON object {name, password}")
            try:
                user, sid = self.login(body.get("name"), body.get("password"))
            except LoginFailed as exc:
                return json_error(401, str(exc))
            return {"session": sid, "user": user.name, "roles": list(user.roles)}

        @app.post("/api/logout")
        def api_logout(request: Request) -> Any:
            self.accounts.close_session(self.session_id(request))
            return {"ok": True}

        @app.get("/login", response_class=HTMLResponse)
        def login_page(next: str = "/", msg: str = "") -> HTMLResponse:  # noqa: A002
            return HTMLResponse(self._login_html(_local(next), msg, css))

        @app.post("/login")
        async def login_post(request: Request) -> Any:
            form = await request.form()
            target = _local(str(form.get("next", "/")))
            try:
                _user, sid = self.login(form.get("name"), form.get("password"))
            except (LoginFailed, Forbidden) as exc:
                return HTMLResponse(self._login_html(target, str(exc), css), status_code=401)
            resp = RedirectResponse(target, status_code=303)
            resp.set_cookie(self.cookie, sid, httponly=True, samesite="strict",
                            max_age=int(self.accounts.session_hours * 3600))
            return resp

        @app.post("/logout")
        def logout(request: Request) -> Any:
            self.accounts.close_session(request.cookies.get(self.cookie, ""))
            resp = RedirectResponse("/login", status_code=303)
            resp.delete_cookie(self.cookie)
            return resp

    def _login_html(self, target: str, msg: str, css: str) -> str:
        error = f'<p id="login-msg" class="error">{h(msg)}</p>' if msg else '<p id="login-msg"></p>'
        body = f"""<main class="login"><h1>{h(self.title)}</h1>{error}
<form method="post" action="/login"><input type="hidden" name="next" value="{h(target)}">
<p><label>Account <input name="name" id="name" autocomplete="username" required></label></p>
<p><label>Password <input name="password" id="password" type="password" autocomplete="current-password"
required></label></p>
<button type="submit" id="login">Log in</button></form>
<p class="muted">Accounts are made by an admin: <code>app users add NAME --role {h(self.role)}</code>.</p></main>"""
        return html_document(f"Log in: {self.title}", body, css=css + LOGIN_CSS)


LOGIN_CSS = """main.login{max-width:420px;margin:60px auto;font:15px/1.5 system-ui,sans-serif}
main.login input{width:100%;padding:6px} #login-msg.error{color:#cf222e;font-weight:600}"""


def _local(target: str) -> str:
    """``target`` when it is a path on this server, else "/" (no open redirect after login)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


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


__all__ = ["new_app", "RequestLimits", "WebAuth", "NotLoggedIn", "Forbidden", "json_error", "answer_errors",
           "http_error", "read_json", "session_id", "serve_app", "h", "html_document", "AccountError"]
