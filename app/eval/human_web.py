"""The human-evaluation web app: annotators log in and rate answers blind, one item at a time.

Pages (plain HTML forms, no JavaScript needed):
    GET  /login, POST /login     study, name and password (annotators with an account) or the
                                 study's token (annotators without) -> a session cookie
    GET  /                       the next item assigned to you (or "all done"), with your progress
    POST /rate                   your rating of an item -> the next one
    GET  /logout
API (the session as cookie or ``Authorization: Bearer <session>``):
    POST /api/login {study, name, token} -> {"session": ...}   (token: the password or the token)
    GET  /api/next                       the next item (blind) or null
    POST /api/rate {item_id, correctness, groundedness, helpfulness | preference, note}
    GET  /api/progress                   {"done", "total"}
Errors are {"error": message}: 400 for bad input, 401 without a valid session or for a failed login.

A single item shows one answer with three 1-5 scales; a pair item shows answers A and B side by
side and asks which is better. Model names are never sent; everything shown is HTML-escaped.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from app.accounts import AccountStore, LoginFailed
from app.eval.human import (
    CRITERIA,
    PREFERENCES,
    SCALE,
    SESSION_DAYS,
    HumanEvalError,
    HumanEvalStore,
)
from app.web import answer_errors, h, html_document, json_error, new_app, read_json, serve_app, session_id

COOKIE = "he_session"
HINTS = {
    "correctness": "Does the answer say what the reference says (1: wrong, 5: fully correct)?",
    "groundedness": "Is everything it claims supported by the context (1: made up, 5: all supported)?",
    "helpfulness": "Would it help someone asking this question (1: useless, 5: exactly what they need)?",
}


class Unauthorized(Exception):
    pass


def create_app(store: HumanEvalStore, accounts: AccountStore | None = None) -> FastAPI:
    """The rating app over ``store``; annotators linked to an account log in against ``accounts``
    (their password; the account needs the annotator role), the others with their study token."""
    app = new_app("Human evaluation")

    def account_id(name: str, password: str) -> int | None:
        if accounts is None:
            return None
        try:
            user = accounts.authenticate(name, password)
        except LoginFailed:
            return None
        return user.id if user.can("annotator") else None

    def who(request: Request) -> int:
        annotator = store.session_annotator(session_id(request, COOKIE))
        if annotator is None:
            raise Unauthorized()
        return annotator

    def login(study: str, name: str, token: str) -> str:
        return store.open_session(store.login(study.strip(), name.strip(), token, account_id))

    async def form(request: Request) -> dict[str, str]:
        body = (await request.body()).decode("utf-8", errors="replace")
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, _exc: Unauthorized) -> Any:
        if request.url.path.startswith("/api/"):
            return json_error(401, "log in first (POST /api/login)")
        return RedirectResponse("/login", status_code=303)

    answer_errors(app, HumanEvalError)  # 400

    # -- API -------------------------------------------------------------------------------------

    async def json_object(request: Request, fields: str) -> dict[str, Any]:
        try:
            body = await read_json(request)
        except ValueError:  # not JSON, nested too deeply, or text with a lone surrogate
            raise HumanEvalError(f"the body must be JSON: {fields}") from None
        if not isinstance(body, dict):
            raise HumanEvalError(f"the body must be a JSON object: {fields}")
        return body

    @app.post("/api/login")
    async def api_login(request: Request) -> Any:
        body = await json_object(request, "{study, name, token}")
        missing = [k for k in ("study", "name", "token") if not isinstance(body.get(k), str)]
        if missing:  # a malformed body: 400
            raise HumanEvalError(f"the body must be a JSON object {{study, name, token}} of strings; missing or "
                                 f"not a string: {missing}")
        try:
            return {"session": login(body["study"], body["name"], body["token"])}
        except HumanEvalError as exc:  # unknown study, annotator or token (one message for all three)
            return json_error(401, str(exc))

    @app.get("/api/next")
    def api_next(request: Request) -> Any:
        return store.next_item(who(request))

    @app.get("/api/progress")
    def api_progress(request: Request) -> Any:
        return store.progress(who(request))

    @app.post("/api/rate")
    async def api_rate(request: Request) -> Any:
        annotator = who(request)
        body = await json_object(request, "{item_id, correctness, groundedness, helpfulness | preference, note}")
        return store.rate(annotator, _item_id(body.get("item_id")), body)

    # -- pages -----------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_page(msg: str = "") -> HTMLResponse:
        return HTMLResponse(_login_html(msg))

    @app.post("/login")
    async def login_post(request: Request) -> Any:
        f = await form(request)
        try:
            sid = login(f.get("study", ""), f.get("name", ""), f.get("token", ""))
        except HumanEvalError as exc:
            return HTMLResponse(_login_html(str(exc)), status_code=401)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", max_age=SESSION_DAYS * 86400)
        return resp

    @app.get("/logout")
    def logout(request: Request) -> Any:
        store.close_session(request.cookies.get(COOKIE) or "")
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, msg: str = "") -> HTMLResponse:
        annotator = who(request)
        me, progress = store.annotator(annotator), store.progress(annotator)
        item = store.next_item(annotator)
        return HTMLResponse(_item_html(me, progress, item, msg))

    @app.post("/rate")
    async def rate_post(request: Request) -> Any:
        annotator = who(request)
        f = await form(request)
        try:
            store.rate(annotator, _item_id(f.get("item_id")), f)
        except HumanEvalError as exc:
            me, progress = store.annotator(annotator), store.progress(annotator)
            try:  # the form again, with the item when the id names one of yours
                item = store.item_for(annotator, _item_id(f.get("item_id")))
            except HumanEvalError:
                item = None
            return HTMLResponse(_item_html(me, progress, item, str(exc), error=True), status_code=400)
        return RedirectResponse("/", status_code=303)

    return app


def _item_id(value: Any) -> int:
    """An item id as sent: a JSON integer (4.0 too, as some clients send) or a form's ASCII digits, from 1
    to 2**63 - 1 (SQLite's integers: the store fails on larger ones); HumanEvalError otherwise (a
    boolean, a fraction, Infinity, a number too large)."""
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    text = value.strip() if isinstance(value, str) else ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if text.isascii() and text.isdigit():
        value = int(text) if len(text) <= 19 else 2**63  # past the range (and int() of 4300+ digits raises)
    if not isinstance(value, int) or isinstance(value, bool):
        raise HumanEvalError(f"item id must be an integer, got {shown}")
    if not 0 < value < 2**63:
        raise HumanEvalError(f"item id must be from 1 to {2**63 - 1}, got {shown}")
    return value


def serve(store: HumanEvalStore, accounts: AccountStore, host: str = "127.0.0.1", port: int = 8766) -> None:
    """Run the human-evaluation app with uvicorn until interrupted."""
    serve_app(create_app(store, accounts), host, port)


# -- rendering ------------------------------------------------------------------------------------

CSS = """
body{font-family:sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
.box{border:1px solid #ccc;border-radius:6px;padding:.8em 1em;margin:.6em 0;white-space:pre-wrap}
.ctx{background:#fafafa;font-size:13px;max-height:14em;overflow:auto}.ref{background:#f2f8f2}
.pair{display:flex;gap:1em}.pair>div{flex:1}fieldset{border:1px solid #ddd;margin:.6em 0}
.msg{padding:.5em;background:#eef}.err{background:#fdd}.hint{color:#666;font-size:13px}
label{margin-right:1em}button{font-size:15px;padding:.4em 1.2em}
"""


def _page(title: str, body: str) -> str:
    return html_document(title, body, css=CSS)


def _login_html(msg: str) -> str:
    err = f"<p class='msg err' id='msg'>{h(msg)}</p>" if msg else ""
    return _page("Log in", f"""<h1>Human evaluation</h1>{err}
<form method="post" action="/login">
<p><label>Study <input name="study" id="study" required></label></p>
<p><label>Your name <input name="name" id="name" required></label></p>
<p><label>Password or study token <input name="token" id="token" type="password" required></label></p>
<button type="submit" id="login">Log in</button></form>""")


def _item_html(me: dict[str, Any], progress: dict[str, int], item: dict[str, Any] | None, msg: str,
               error: bool = False) -> str:
    head = (f"<p>Logged in as <b id='who'>{h(me['name'])}</b> (study {h(me['study'])}) · "
            f"<span id='progress'>{progress['done']} of {progress['total']} done</span> · <a href='/logout'>log out</a></p>")
    note = f"<p class='msg{' err' if error else ''}' id='msg'>{h(msg)}</p>" if msg else ""
    if item is None:
        return _page("All done", head + note + "<h1 id='done'>All done: every item assigned to you is rated. Thank you!</h1>")
    prev = item.get("rating") or {}
    parts = [head, note, f"<form method='post' action='/rate' id='rate' data-item='{item['item_id']}' data-kind='{item['kind']}'>",
             f"<input type='hidden' name='item_id' value='{item['item_id']}'>",
             f"<h2>Question</h2><div class='box' id='question'>{h(item['question'])}</div>"]
    if item.get("context"):
        parts.append(f"<details open><summary>Context the model was given</summary><div class='box ctx'>{h(item['context'])}</div></details>")
    parts.append(f"<h3>Reference answer</h3><div class='box ref' id='reference'>{h(item['reference'])}</div>")
    if item["kind"] == "single":
        parts.append(f"<h2>Answer to rate</h2><div class='box' id='answer'>{h(item['answer'])}</div>")
        for c in CRITERIA:
            radios = "".join(
                f"<label><input type='radio' name='{c}' value='{v}' id='{c}-{v}' required"
                f"{' checked' if prev.get(c) == v else ''}> {v}</label>" for v in range(SCALE[0], SCALE[1] + 1))
            parts.append(f"<fieldset><legend><b>{c}</b> <span class='hint'>{h(HINTS[c])}</span></legend>{radios}</fieldset>")
    else:
        parts.append(f"<h2>Which answer is better?</h2><div class='pair'><div><h3>Answer A</h3><div class='box' id='answer-a'>"
                     f"{h(item['answer_a'])}</div></div><div><h3>Answer B</h3><div class='box' id='answer-b'>"
                     f"{h(item['answer_b'])}</div></div></div>")
        radios = "".join(f"<label><input type='radio' name='preference' value='{p}' id='preference-{p}' required"
                         f"{' checked' if prev.get('preference') == p else ''}> {'A and B are equally good' if p == 'tie' else p + ' is better'}</label>"
                         for p in PREFERENCES)
        parts.append(f"<fieldset><legend><b>preference</b></legend>{radios}</fieldset>")
    parts.append(f"<p><label>Note (optional) <input name='note' id='note' size='60' value='{h(prev.get('note'))}'></label></p>"
                 "<button type='submit' id='submit'>Save and next</button></form>")
    return _page("Rate an answer", "".join(parts))
