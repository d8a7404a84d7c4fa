"""The review web app: one server-rendered page to approve, edit or reject QA pairs, and a JSON API.

Every page and API call needs a login with an account that has the reviewer role (app.accounts,
``app users add NAME --role reviewer``); every action records that account.

Pages:
    /login             log in (``POST /logout`` to log out)
    /                  the next item matching the filters (?status=pending&topic=...&after=<pair_id>)
    /item/{pair_id}    one item with its full history
API (the session as ``Authorization: Bearer <session>`` or the page's cookie):
    POST /api/login {name, password} -> {"session", "user", "roles"}
    GET  /api/items?status=&topic=&generator=&limit=&offset=   {"items": [...], "total", "limit", "offset"}
    GET  /api/items/{id}            the item
    GET  /api/items/{id}/history    its events, oldest first
    POST /api/items/{id}/review     {action, question?, answer?, note?} -> the item
    GET  /api/next?status=&topic=&after=   the next item or null
    GET  /api/stats
Errors are {"error": message}: 400 for bad input, 401 without a login, 403 without the role or for a
write from another origin, 404 for an unknown pair id, 413 for a body over 1 MB.

Plain HTML, inline CSS and a little vanilla JS; everything shown is HTML-escaped.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.accounts import AccountStore, User
from app.data.review import STATUSES, ReviewError, ReviewStore, UnknownPairError
from app.web import WebAuth, answer_errors, h, html_document, http_error, json_error, new_app, serve_app

TITLE = "QA pair review"


MAX_LIMIT = 500  # items per /api/items page
MAX_OFFSET = 10**9  # more items than a dataset has; SQLite fails on offsets past 64 bits
MAX_TEXT = 20_000  # characters of an edited question, answer or note


class ReviewRequest(BaseModel):
    """A review action. The reviewer is the logged-in account: a ``reviewer`` field is refused."""

    model_config = ConfigDict(extra="forbid")
    action: str = Field("", max_length=16)
    question: str | None = Field(None, max_length=MAX_TEXT)
    answer: str | None = Field(None, max_length=MAX_TEXT)
    note: str = Field("", max_length=MAX_TEXT)


def _int_param(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ReviewError(f"{name} must be an integer, got {value!r}") from None


def create_app(store: ReviewStore, accounts: AccountStore) -> FastAPI:
    """The review app over ``store``; people log in against ``accounts`` (reviewer role)."""
    auth = WebAuth(accounts, "reviewer", "review_session", TITLE)
    app = new_app(TITLE, dependencies=[Depends(_login_required(auth))])
    auth.mount(app, CSS)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI parses a body before the login check runs: a stranger's bad body still gets 401.
        refusal = auth.refusal(request) if request.url.path not in OPEN_PATHS else None
        if refusal is not None:
            return refusal
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return json_error(400, f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # A body FastAPI cannot parse at all (400, e.g. nested too deeply): the login check first, as above.
        refusal = auth.refusal(request) if exc.status_code == 400 and request.url.path not in OPEN_PATHS else None
        return refusal or await http_error(request, exc)

    # Every JSON endpoint: 404 for an unknown id, else 400.
    answer_errors(app, ReviewError, lambda exc: 404 if isinstance(exc, UnknownPairError) else 400)

    # -- JSON API ---------------------------------------------------------------------------------

    @app.get("/api/items")
    def api_items(status: str | None = None, topic: str | None = None, generator: str | None = None,
                  limit: str | None = None, offset: str | None = None) -> Any:
        lim, off = _int_param(limit, "limit", 50), _int_param(offset, "offset", 0)
        if not 1 <= lim <= MAX_LIMIT or not 0 <= off <= MAX_OFFSET:
            raise ReviewError(f"limit must be in [1, {MAX_LIMIT}] and offset in [0, {MAX_OFFSET}], "
                              f"got limit={lim}, offset={off}")
        status, topic, generator = status or None, topic or None, generator or None
        items = store.items(status=status, topic=topic, generator=generator, limit=lim, offset=off)
        total = store.count(status=status, topic=topic, generator=generator)
        return {"items": items, "total": total, "limit": lim, "offset": off}

    @app.get("/api/items/{pair_id}")
    def api_item(pair_id: str) -> Any:
        return store.get(pair_id)

    @app.get("/api/items/{pair_id}/history")
    def api_history(pair_id: str) -> Any:
        return store.history(pair_id)

    @app.post("/api/items/{pair_id}/review")
    def api_review(pair_id: str, body: ReviewRequest, request: Request) -> Any:
        user: User = request.state.user
        return store.review(pair_id, user.name, body.action, question=body.question, answer=body.answer,
                            note=body.note, user_id=user.id)

    @app.get("/api/next")
    def api_next(status: str | None = "pending", topic: str | None = None, after: str | None = None) -> Any:
        return store.next_item(_status_filter(status), topic or None, after or None)

    @app.get("/api/stats")
    def api_stats() -> Any:
        return store.stats()

    # -- pages ------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, status: str | None = "pending", topic: str | None = None,
              after: str | None = None, msg: str | None = None) -> HTMLResponse:
        status_value = status if status in (*STATUSES, "all") else "pending"
        try:
            item = store.next_item(_status_filter(status_value), topic or None, after or None)
        except ReviewError as exc:
            item, msg = None, str(exc)
        history = store.history(item["pair_id"]) if item else []
        return HTMLResponse(_page(store, request, item, history, mode="next", status=status_value,
                                  topic=topic or "", msg=msg or ""))

    @app.get("/item/{pair_id}", response_class=HTMLResponse)
    def item_page(request: Request, pair_id: str, msg: str | None = None) -> HTMLResponse:
        try:
            item, history = store.get(pair_id), store.history(pair_id)
        except UnknownPairError as exc:
            return HTMLResponse(_page(store, request, None, [], mode="item", status="all", topic="",
                                      msg=str(exc), error=True), status_code=404)
        return HTMLResponse(_page(store, request, item, history, mode="item", status="all", topic="",
                                  msg=msg or ""))

    return app


def serve(store: ReviewStore, accounts: AccountStore, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the review app with uvicorn until interrupted."""
    serve_app(create_app(store, accounts), host, port)


OPEN_PATHS = ("/login", "/api/login", "/api/logout", "/logout")


def _login_required(auth: WebAuth):
    """The app-wide dependency: every route but the login routes needs a reviewer's session."""

    def check(request: Request) -> None:
        if request.url.path not in OPEN_PATHS:
            request.state.user = auth.user(request)

    return check


def _status_filter(status: str | None) -> str | None:
    return None if not status or status == "all" else status


# -- rendering ------------------------------------------------------------------------------------


def highlight(context: str, evidence: str) -> tuple[str, bool]:
    """The context as HTML with the evidence span in <mark>; found=False when it is not in the context.

    The match ignores case and differences in whitespace.
    """
    words = evidence.split()
    if not words:
        return h(context), False
    match = re.search(r"\s+".join(re.escape(w) for w in words), context, flags=re.IGNORECASE)
    if match is None:
        return h(context), False
    s, e = match.span()
    return f"{h(context[:s])}<mark>{h(context[s:e])}</mark>{h(context[e:])}", True


def _when(iso: str | None) -> str:
    """'2026-01-02T03:04:05.123+00:00' -> '2026-01-02 03:04:05' (UTC, to the second)."""
    return (iso or "")[:19].replace("T", " ")


CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#f4f5f7}
header{background:#24292f;color:#fff;padding:10px 20px;display:flex;flex-wrap:wrap;gap:14px;align-items:center}
header h1{font-size:17px;margin:0 12px 0 0}
header a{color:#fff}
header label{font-size:13px;opacity:.9}
header input,header select{padding:4px 6px;border-radius:4px;border:1px solid #57606a;font:inherit}
#reviewer{font-weight:600}
header form.logout button{padding:2px 10px;font-size:13px;font-weight:500}
.counts{display:flex;gap:6px;flex-wrap:wrap}
.counts a{text-decoration:none;padding:2px 9px;border-radius:12px;background:#3d444d;font-size:13px}
.counts a.on{background:#0969da}
main{max-width:1250px;margin:18px auto;padding:0 16px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 18px;margin-bottom:16px}
.grid{display:grid;grid-template-columns:minmax(0,1.1fr) minmax(0,1fr);gap:16px}
@media(max-width:900px){.grid{grid-template-columns:1fr}}
h2{font-size:15px;margin:0 0 10px}
label.f{display:block;font-weight:600;font-size:13px;margin:10px 0 4px}
textarea,input.note{width:100%;font:inherit;padding:8px;border:1px solid #d0d7de;border-radius:6px}
textarea#question{min-height:70px} textarea#answer{min-height:150px}
.buttons{display:flex;gap:8px;flex-wrap:wrap;margin-top:12px}
button{font:inherit;font-weight:600;padding:7px 16px;border-radius:6px;border:1px solid #d0d7de;background:#f6f8fa;cursor:pointer}
button:disabled{opacity:.5;cursor:wait}
#approve{background:#1f883d;color:#fff;border-color:#1a7f37}
#save{background:#0969da;color:#fff;border-color:#0860ca}
#reject{background:#cf222e;color:#fff;border-color:#a40e26}
#status-msg{min-height:1.5em;margin:0 0 12px;padding:0}
#status-msg.ok{color:#1a7f37} #status-msg.error{color:#cf222e;font-weight:600}
table.meta{border-collapse:collapse;width:100%;font-size:13px}
table.meta th{text-align:left;color:#57606a;font-weight:500;padding:3px 10px 3px 0;width:9.5em;vertical-align:top}
table.meta td{padding:3px 0;word-break:break-word}
.passage{white-space:pre-wrap;font:13px/1.55 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f6f8fa;
  border:1px solid #d0d7de;border-radius:6px;padding:10px;max-height:480px;overflow:auto}
mark{background:#fff3a3;padding:0 1px;border-radius:2px}
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600;background:#eaeef2}
.badge.pending{background:#fff8c5}.badge.approved{background:#dafbe1}.badge.edited{background:#ddf4ff}
.badge.rejected{background:#ffebe9}.badge.yes{background:#dafbe1}.badge.no{background:#ffebe9}
.muted{color:#57606a;font-size:13px}
table.hist{border-collapse:collapse;width:100%;font-size:13px}
table.hist th,table.hist td{border-top:1px solid #d0d7de;padding:5px 6px;text-align:left;vertical-align:top}
del{background:#ffebe9;text-decoration:none} ins{background:#dafbe1;text-decoration:none}
.empty{text-align:center;padding:40px 10px;font-size:17px}
code{font-size:12px}
"""

JS = """
(function(){
  const $ = id => document.getElementById(id);
  const root = $('review-root');
  const msg = $('status-msg');
  function show(text, isError){ msg.textContent = text; msg.className = isError ? 'error' : 'ok'; }
  if (!root) return;
  const pid = root.dataset.pairId, mode = root.dataset.mode;
  const buttons = Array.from(document.querySelectorAll('.buttons button'));
  function go(params){ const q = new URLSearchParams(params);
    location.href = mode === 'item' ? '/item/' + encodeURIComponent(pid) + '?' + q : '/?' + q; }
  function nextParams(extra){ return Object.assign({status: root.dataset.status, topic: root.dataset.topic, after: pid}, extra); }
  async function act(action){
    const body = {action: action, note: $('note').value};
    if (action === 'approve' || action === 'edit') { body.question = $('question').value; body.answer = $('answer').value; }
    buttons.forEach(b => b.disabled = true); show('Saving\\u2026', false);
    let resp, data = {};
    try {
      resp = await fetch('/api/items/' + encodeURIComponent(pid) + '/review', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
      data = await resp.json().catch(() => ({}));
    } catch (e) { show('Network error: ' + e, true); buttons.forEach(b => b.disabled = false); return; }
    if (!resp.ok) { show(data.error || ('HTTP ' + resp.status), true); buttons.forEach(b => b.disabled = false); return; }
    const done = {approve: 'Approved', edit: 'Saved the edit of', reject: 'Rejected', reopen: 'Reopened'}[action];
    go(mode === 'item' ? {msg: done + ' ' + pid + '.'} : nextParams({msg: done + ' ' + pid + '.'}));
  }
  const bind = (id, fn) => { const el = $(id); if (el) el.addEventListener('click', fn); };
  bind('approve', () => act('approve'));
  bind('save', () => act('edit'));
  bind('reject', () => act('reject'));
  bind('reopen', () => act('reopen'));
  bind('skip', () => go(nextParams({})));
})();
"""


def _page(store: ReviewStore, request: Request, item: dict | None, history: list[dict], *, mode: str, status: str,
          topic: str, msg: str, error: bool = False) -> str:
    stats = store.stats()
    topics = store.topics()
    reviewer = request.state.user.name

    def link(st: str) -> str:
        return "/?" + urlencode({"status": st, **({"topic": topic} if topic else {})})

    counts = "".join(
        f'<a id="count-{st}" class="{"on" if st == status and mode == "next" else ""}" href="{h(link(st))}">'
        f'{st} <b>{stats["by_status"].get(st, 0) if st != "all" else stats["total"]}</b></a>'
        for st in (*STATUSES, "all"))
    status_opts = "".join(f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>'
                          for s in (*STATUSES, "all"))
    topic_opts = '<option value="">all topics</option>' + "".join(
        f'<option value="{h(t)}"{" selected" if t == topic else ""}>{h(t) or "(none)"}</option>' for t in topics if t)
    header = f"""<header>
<h1><a href="/" style="text-decoration:none">{TITLE}</a></h1>
<span>Reviewer <span id="reviewer">{h(reviewer)}</span></span>
<form class="logout" method="post" action="/logout"><button type="submit" id="logout">Log out</button></form>
<form id="filters" method="get" action="/" style="display:flex;gap:8px;align-items:center">
  <label for="filter-status">Status</label>
  <select id="filter-status" name="status" onchange="this.form.submit()">{status_opts}</select>
  <label for="filter-topic">Topic</label>
  <select id="filter-topic" name="topic" onchange="this.form.submit()">{topic_opts}</select>
  <noscript><button type="submit">Filter</button></noscript>
</form>
<nav class="counts">{counts}</nav>
</header>"""
    msg_html = f'<p id="status-msg" class="{"error" if error else "ok" if msg else ""}">{h(msg)}</p>'
    if item is None:
        if mode == "item":
            body = '<div class="card empty">No such item. <a href="/">Back to the review queue</a></div>'
        else:
            where = f" in topic {h(topic)}" if topic else ""
            body = f'<div class="card empty" id="empty">No {h(status if status != "all" else "")} items{where}.' \
                   f' {"Nothing left to review." if status == "pending" else ""}</div>'
        return _document(header, msg_html + body)
    return _document(header, msg_html + _item_html(item, history, mode=mode, status=status, topic=topic))


def _item_html(item: dict, history: list[dict], *, mode: str, status: str, topic: str) -> str:
    pid = item["pair_id"]
    verdict = ('<span class="badge yes">accepted</span>' if item["auto_accepted"] else
               f'<span class="badge no">rejected</span> {h(item["reject_reason"])}')
    reviewed = (f'{h(item["reviewer"])} <span class="muted">{h(_when(item["reviewed_at"]))} UTC</span>'
                if item["reviewer"] else '<span class="muted">not yet</span>')
    meta_rows = [
        ("Status", f'<span id="item-status" class="badge {h(item["status"])}">{h(item["status"])}</span>'),
        ("Quality filter", verdict),
        ("Generator", f'{h(item["generator"])} <span class="muted">{h(item["origin"])}</span>'),
        ("Topic", h(item["topic"])),
        ("Document", f'{h(item["doc_title"])}<br><span class="muted">{h(item["doc_path"])}</span>'),
        ("Section", h(item["section"])),
        ("Chunk", f'<code>{h(item["chunk_id"])}</code>'),
        ("Reviewed by", reviewed),
        ("Note", f'<span id="item-note">{h(item["note"])}</span>'),
        ("Builds", f'first {h(item["first_seen_build"])}, last {h(item["last_seen_build"])}'),
    ]
    meta = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in meta_rows)
    generated = ""
    if (item["question"], item["answer"]) != (item["orig_question"], item["orig_answer"]):
        generated = (f'<details class="muted" style="margin-top:8px"><summary>Generated text</summary>'
                     f'<p><b>Q:</b> {h(item["orig_question"])}</p><p><b>A:</b> {h(item["orig_answer"])}</p>'
                     f'</details>')
    passage, found = highlight(item["context"], item["evidence"])
    evidence_note = ""
    if item["evidence"] and not found:
        evidence_note = (f'<p class="muted">Evidence (not found verbatim in the passage):</p>'
                         f'<div class="passage" id="evidence"><mark>{h(item["evidence"])}</mark></div>')
    elif not item["evidence"]:
        evidence_note = '<p class="muted">The generator gave no evidence span.</p>'
    reopen = '<button id="reopen" type="button">Reopen</button>' if item["status"] != "pending" else ""
    skip = "" if mode == "item" else '<button id="skip" type="button" title="Leave it for later">Skip</button>'
    next_link = ("" if mode == "next" else
                 ' &middot; <a href="/?status=pending">next pending</a>')
    editor = f"""<div class="card" id="review-root" data-pair-id="{h(pid)}" data-mode="{h(mode)}"
  data-status="{h(status)}" data-topic="{h(topic)}">
<h2>Pair <code id="pair-id">{h(pid)}</code>
 <span class="muted"><a href="/item/{quote(pid, safe='')}">permalink &amp; history</a>{next_link}</span></h2>
<label class="f" for="question">Question</label>
<textarea id="question" name="question">{h(item["question"])}</textarea>
<label class="f" for="answer">Answer</label>
<textarea id="answer" name="answer">{h(item["answer"])}</textarea>
{generated}
<label class="f" for="note">Note <span class="muted">(optional, e.g. why it is rejected)</span></label>
<input id="note" class="note" name="note" value="">
<div class="buttons">
  <button id="approve" type="button" title="Keep the text as it is">Approve</button>
  <button id="save" type="button" title="Save the changed question/answer">Save edit</button>
  <button id="reject" type="button" title="Drop this pair from the dataset">Reject</button>
  {skip}{reopen}
</div>
</div>"""
    source = f"""<div class="card"><h2>Details</h2><table class="meta">{meta}</table></div>
<div class="card"><h2>Source passage</h2><div class="passage" id="context">{passage}</div>{evidence_note}</div>"""
    hist = _history_html(history)
    return f'<div class="grid"><div>{editor}{hist}</div><div>{source}</div></div>'


def _history_html(history: list[dict]) -> str:
    if not history:
        return '<div class="card" id="history"><h2>History</h2><p class="muted">No reviews yet.</p></div>'
    rows = []
    for ev in history:
        changes = []
        for field in ("question", "answer"):
            before, after = ev[f"{field}_before"], ev[f"{field}_after"]
            if before != after:
                changes.append(f"<div><b>{field}:</b> <del>{h(before)}</del> &rarr; <ins>{h(after)}</ins></div>")
        if ev["status_before"] != ev["status_after"]:
            changes.insert(0, f'<div>{h(ev["status_before"])} &rarr; <b>{h(ev["status_after"])}</b></div>')
        if ev["note"]:
            changes.append(f'<div class="muted">note: {h(ev["note"])}</div>')
        rows.append(f'<tr class="event"><td>{h(_when(ev["created_at"]))}</td><td>{h(ev["reviewer"])}</td>'
                    f'<td>{h(ev["action"])}</td><td>{"".join(changes)}</td></tr>')
    return (f'<div class="card" id="history"><h2>History</h2><table class="hist"><tr><th>when (UTC)</th>'
            f'<th>reviewer</th><th>action</th><th>change</th></tr>{"".join(rows)}</table></div>')


def _document(header: str, body: str) -> str:
    return html_document(TITLE, f"{header}<main>{body}</main>", css=CSS, script=JS)


__all__ = ["create_app", "serve", "highlight"]
