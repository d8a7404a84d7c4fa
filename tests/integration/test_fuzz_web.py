"""The web apps people write to, fuzzed from their OpenAPI schemas (tests/fuzzing.py): the dataset
review app and the human-evaluation app, in process (ASGI, no server, no Ray), logged in and without
credentials.

Every generated request must get no 5xx, a 4xx that says why (``{"error": ...}`` from the API), no
change to what is stored when it is refused, and the app must still answer afterwards. Without
credentials every write is refused (401; a form page of the human-evaluation app sends the browser to
its login page instead) and nothing at all is stored.

Routes that read their JSON or form body themselves declare none in OpenAPI; the bodies below
(``REVIEW_BODIES``, ``HUMAN_BODIES``) are added to the loaded schema by the harness, not to the apps.

Bounded for a 2-core machine: per operation at most 40 coverage cases, the hostile-value matrix, and 30
generated examples; password hashes made cheap for the run; a wall-time budget per run. The whole file
takes about two minutes. Run with ``-s`` to see the per-operation tables.
"""

from __future__ import annotations

import inspect

import pytest

from app.accounts import AccountStore
from app.data.review import ReviewStore
from app.eval.human import HumanEvalStore
from tests.fuzzing import FORM_BODY, JSON_BODY, FuzzReport, fuzz, sqlite_snapshot
from tests.unit.data.test_review_web import PASSWORD, make_pair
from tests.unit.eval.test_human import eval_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EXAMPLES = 30  # generated examples per operation and run
BUDGET_S = 35.0  # wall time of one run at most (four runs in this file; ~25 s each on a quiet 2-core machine)


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch):
    """Password hashes at scrypt N=2^10 instead of 2^15 (0.2 s a check): a login is fuzzed for its input
    handling, and hundreds of them would otherwise take minutes. The cost is stored in each hash."""
    import app.accounts

    monkeypatch.setattr(app.accounts, "SCRYPT_N", 2**10)
    monkeypatch.setattr(app.accounts, "_DUMMY_HASH", None)

STRING = {"type": "string"}


def show(report: FuzzReport) -> None:
    print("\n" + report.table())
    for p in report.problems[:20]:
        print(p)


def writes_refused(open_paths: tuple[str, ...], page_redirect: str | None = None):
    """The check of a run without credentials: a write to anything but the login routes is refused
    with 401 (or, for a form page when ``page_redirect`` is given, a 303 to it)."""

    def check(case, response) -> str | None:
        method = case.method.upper()
        if method in ("GET", "HEAD", "OPTIONS") or case.operation.path in open_paths:
            return None
        if method != case.operation.method.upper():  # an unexpected method: 405 (checked as any 4xx)
            return None if response.status_code == 405 else f"expected 405, got {response.status_code}"
        status = response.status_code
        if status == 401:
            return None
        if page_redirect and not case.operation.path.startswith("/api/") and status == 303 \
                and response.headers.get("location", [""])[0] == page_redirect:
            return None
        return f"a write without credentials must be refused with 401, got {status}"

    return check


# -- the dataset review app ----------------------------------------------------------------------------

REVIEW_BODIES = {
    "POST /api/login": {JSON_BODY: {"type": "object", "properties": {"name": STRING, "password": STRING},
                                    "required": ["name", "password"]}},
    "POST /login": {FORM_BODY: {"type": "object", "properties": {"name": STRING, "password": STRING, "next": STRING},
                                "required": ["name", "password"]}},
}
# The declared ReviewRequest body, with ``action`` narrowed to the four actions so that valid requests
# also reach the store (a free string is almost never one); invalid ones still send any text.
TEXT = {"anyOf": [{"type": "string", "maxLength": 20_000}, {"type": "null"}]}
REVIEW_BODIES["POST /api/items/{pair_id}/review"] = {JSON_BODY: {
    "type": "object", "additionalProperties": False, "required": ["action"],
    "properties": {"action": {"enum": ["approve", "edit", "reject", "reopen"]}, "question": TEXT, "answer": TEXT,
                   "note": {"type": "string", "maxLength": 20_000}}}}
REVIEW_OPEN = ("/login", "/api/login", "/api/logout", "/logout")
REVIEW_PAGES = {("GET", "/"), ("GET", "/item/{pair_id}"), ("POST", "/login")}  # HTML answers


@pytest.fixture
def review(tmp_path):
    from app.data.review_web import create_app

    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    accounts = AccountStore(f"sqlite:///{tmp_path / 'accounts.db'}")
    accounts.add("rita", PASSWORD, ["reviewer"])
    store.sync([make_pair(i) for i in range(4)], "d", "b1")
    app = create_app(store, accounts)
    snapshot = sqlite_snapshot(tmp_path / "review.db", tmp_path / "accounts.db")
    yield store, accounts, app, snapshot
    store.close()
    accounts.close()


def review_run(app, **kwargs) -> FuzzReport:
    return fuzz(app, max_examples=EXAMPLES, budget_s=BUDGET_S, request_bodies=REVIEW_BODIES,
                json_errors=lambda method, path: (method, path) not in REVIEW_PAGES, **kwargs)


def test_review_app_logged_in(review):
    store, accounts, app, snapshot = review

    def login() -> dict[str, str]:  # a fresh session per operation: fuzzing POST /api/logout ends one
        return {"Authorization": f"Bearer {accounts.open_session(accounts.get('rita'))}"}

    pair_ids = [item["pair_id"] for item in store.items()]
    report = review_run(app, title="review app, logged in as a reviewer", headers=login, snapshot=snapshot,
                        known_good=("GET", "/api/stats"), path_values={"pair_id": [*pair_ids, "no-such-pair"]})
    show(report)
    report.assert_clean()
    assert all(s.examples > 0 for s in report.operations.values())
    # The generator reached the writes behind a real pair id: some reviews were accepted, some refused.
    review_op = report.operations["POST /api/items/{pair_id}/review"]
    assert (review_op.ok > 0 or review_op.truncated) and review_op.refused


def test_review_app_without_credentials(review):
    store, _accounts, app, snapshot = review
    before = snapshot()
    report = review_run(app, title="review app, no credentials", snapshot=snapshot,
                        check=writes_refused(REVIEW_OPEN),
                        path_values={"pair_id": [item["pair_id"] for item in store.items()]})
    show(report)
    report.assert_clean()
    assert snapshot() == before  # nothing stored: no review, no session
    for label, s in report.operations.items():
        assert s.examples > 0, label
        if not label.startswith(("GET", "POST /api/log", "POST /log")):
            assert s.ok == 0, label  # no write accepted


def test_the_harness_fuzzes_a_running_server_too(review):
    """The same checks over HTTP against uvicorn (a base URL instead of an app), briefly."""
    from tests.conftest import web_server

    store, accounts, app, snapshot = review
    with web_server(app) as base:
        report = fuzz(base_url=base, title="review app over HTTP", max_examples=5, coverage_cases=10, budget_s=15,
                      headers=lambda: {"Authorization": f"Bearer {accounts.open_session(accounts.get('rita'))}"},
                      include=["GET /api/items", "POST /api/items/{pair_id}/review"], request_bodies=REVIEW_BODIES,
                      path_values={"pair_id": [item["pair_id"] for item in store.items()]}, snapshot=snapshot,
                      known_good=("GET", "/api/stats"))
    show(report)
    report.assert_clean()
    review_op = report.operations["POST /api/items/{pair_id}/review"]
    assert review_op.ok > 0 or review_op.truncated


# -- the human-evaluation app --------------------------------------------------------------------------

HUMAN_ITEMS = 12  # 4 examples x (2 single + 1 pair)
SCORE = {"type": "integer", "minimum": 1, "maximum": 5}
RATING = {"item_id": {"type": "integer", "minimum": 1, "maximum": HUMAN_ITEMS}, "correctness": SCORE,
          "groundedness": SCORE, "helpfulness": SCORE, "preference": {"enum": ["A", "B", "tie"]}, "note": STRING}
FORM_RATING = {k: STRING for k in RATING}
LOGIN_FIELDS = {"study": STRING, "name": STRING, "token": STRING}
HUMAN_BODIES = {
    "POST /api/login": {JSON_BODY: {"type": "object", "properties": LOGIN_FIELDS, "required": list(LOGIN_FIELDS)}},
    "POST /api/rate": {JSON_BODY: {"type": "object", "properties": RATING, "required": ["item_id"]}},
    "POST /login": {FORM_BODY: {"type": "object", "properties": LOGIN_FIELDS, "required": list(LOGIN_FIELDS)}},
    "POST /rate": {FORM_BODY: {"type": "object", "properties": FORM_RATING, "required": ["item_id"]}},
}
HUMAN_OPEN = ("/login", "/api/login", "/logout")
HUMAN_PAGES = {("GET", "/"), ("GET", "/login"), ("POST", "/login"), ("POST", "/rate"), ("GET", "/logout")}


@pytest.fixture
def human(tmp_path):
    from app.eval import human_web

    store = HumanEvalStore(f"sqlite:///{tmp_path / 'human.db'}")
    made = store.create_study("pilot", eval_run(tmp_path / "run"), ["ann", "bob"], per_item=2, examples=4, seed=3)
    assert made["items"] == HUMAN_ITEMS
    dbs = [tmp_path / "human.db"]
    extra, accounts = {}, None
    if "accounts" in inspect.signature(human_web.create_app).parameters:  # logins against accounts too
        accounts = AccountStore(f"sqlite:///{tmp_path / 'accounts.db'}")
        accounts.add("ann", PASSWORD, ["annotator"])
        extra["accounts"] = accounts
        dbs.append(tmp_path / "accounts.db")
    app = human_web.create_app(store, **extra)
    yield store, made, app, sqlite_snapshot(*dbs)
    store.close()
    if accounts is not None:
        accounts.close()


def human_run(app, **kwargs) -> FuzzReport:
    return fuzz(app, max_examples=EXAMPLES, budget_s=BUDGET_S, request_bodies=HUMAN_BODIES,
                json_errors=lambda method, path: (method, path) not in HUMAN_PAGES, **kwargs)


def test_human_eval_app_logged_in(human):
    store, made, app, snapshot = human

    def login() -> dict[str, str]:
        return {"Authorization": f"Bearer {store.open_session(store.login('pilot', 'ann', made['tokens']['ann']))}"}

    report = human_run(app, title="human-evaluation app, logged in as an annotator", headers=login,
                       snapshot=snapshot, known_good=("GET", "/api/progress"))
    show(report)
    report.assert_clean()
    assert all(s.examples > 0 for s in report.operations.values())
    rate = report.operations["POST /api/rate"]
    assert (rate.ok > 0 or rate.truncated) and rate.refused  # ratings were stored, and bad ones refused


def test_human_eval_app_without_credentials(human):
    _store, _made, app, snapshot = human
    before = snapshot()
    report = human_run(app, title="human-evaluation app, no credentials", snapshot=snapshot,
                       check=writes_refused(HUMAN_OPEN, page_redirect="/login"), known_good=("GET", "/login"))
    show(report)
    report.assert_clean()
    assert snapshot() == before
    assert all(s.examples > 0 for s in report.operations.values())
    assert report.operations["POST /api/rate"].ok == 0


# -- regressions the fuzzer found in the human-evaluation app ---------------------------------------------
# (The review app's and app/web.py's are in tests/unit/data/test_review_web.py.)


def annotator_client(human):
    from fastapi.testclient import TestClient

    store, made, app, snapshot = human
    client = TestClient(app, base_url="http://human.test")
    sid = store.open_session(store.login("pilot", "ann", made["tokens"]["ann"]))
    return client, {"Authorization": f"Bearer {sid}"}, snapshot


@pytest.mark.parametrize("item_id", ["Infinity", "1e308", str(2**64), str(-(2**63) - 1), '"99999999999999999999"',
                                     "true", "1.5"])
def test_an_item_id_no_item_can_have_is_400(human, item_id):
    """Infinity, 1e308 and ids past 64 bits raised OverflowError (int(), SQLite): 500; true and 1.5 rated
    item 1."""
    client, headers, snapshot = annotator_client(human)
    before = snapshot()
    body = f'{{"item_id": {item_id}, "preference": "A", "correctness": 3, "groundedness": 3, "helpfulness": 3}}'
    r = client.post("/api/rate", content=body, headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("item id must be"), r.text
    assert snapshot() == before
    r = client.post("/rate", data={"item_id": "99999999999999999999", "preference": "A"}, headers=headers)
    assert r.status_code == 400 and "item id must be from 1 to" in r.text


@pytest.mark.parametrize("path", ["/api/login", "/api/rate"])
@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000, b'{"study": "\\ud800", "name": "ann", "token": "x"}',
                                  b'{"item_id": 1, "preference": "A", "note": "\\ud800"}'])
def test_json_no_parser_or_database_takes_is_400(human, path, body):
    """Nested 100,000 deep (RecursionError) or with a lone surrogate (UnicodeEncodeError in SQLite): 500."""
    client, headers, snapshot = annotator_client(human)
    before = snapshot()
    r = client.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("the body must be JSON"), r.text
    assert snapshot() == before
