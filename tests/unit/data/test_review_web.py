"""The review app's JSON API: logins against the accounts table, roles, refusals, limits, origins."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.accounts import AccountStore
from app.data.review import ReviewStore
from app.datasets import pair_id

PASSWORD = "reviewer password 1"


def make_pair(i: int) -> dict:
    q = f"What does reader {i} return?"
    return {"pair_id": pair_id("llm", f"c{i}", q), "question": q, "answer": f"Reader {i} returns lines.",
            "evidence": "returns lines", "generator": "llm", "origin": "m", "doc_id": "d", "doc_path": "d.md",
            "doc_title": "D", "section": "S", "chunk_id": f"c{i}", "topic": "io",
            "context": f"Reader {i} returns lines.", "accepted": True, "reject_reason": ""}


@pytest.fixture
def app_parts(tmp_path):
    from app.data.review_web import create_app

    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    accounts = AccountStore(f"sqlite:///{tmp_path / 'accounts.db'}")
    accounts.add("rita", PASSWORD, ["reviewer"])
    accounts.add("anna", PASSWORD, ["annotator"])
    accounts.add("root", PASSWORD, ["admin"])
    store.sync([make_pair(i) for i in range(3)], "d", "b1")
    client = TestClient(create_app(store, accounts), base_url="http://review.test")
    yield store, accounts, client
    store.close()
    accounts.close()


def login(client, name="rita", password=PASSWORD) -> dict:
    r = client.post("/api/login", json={"name": name, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['session']}"}


def test_every_route_needs_a_login(app_parts):
    store, _accounts, client = app_parts
    pid = store.items()[0]["pair_id"]
    for method, path in (("get", "/api/items"), ("get", f"/api/items/{pid}"), ("get", f"/api/items/{pid}/history"),
                         ("get", "/api/next"), ("get", "/api/stats"), ("post", f"/api/items/{pid}/review")):
        r = client.request(method.upper(), path, json={"action": "approve"} if method == "post" else None)
        assert r.status_code == 401 and "log in" in r.json()["error"], (path, r.status_code)
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
    assert store.stats()["events"] == 0


def test_failed_logins_are_401_and_say_the_same(app_parts):
    _store, accounts, client = app_parts
    wrong = client.post("/api/login", json={"name": "rita", "password": "wrong password!"})
    unknown = client.post("/api/login", json={"name": "nobody", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"error": "unknown account or wrong password"}
    assert client.post("/api/login", json=["rita"]).status_code == 400
    accounts.set_disabled("rita")
    assert client.post("/api/login", json={"name": "rita", "password": PASSWORD}).status_code == 401


def test_writes_record_the_account_and_roles_are_enforced(app_parts):
    store, accounts, client = app_parts
    pid = store.items()[0]["pair_id"]
    # An annotator account may not review.
    r = client.post("/api/login", json={"name": "anna", "password": PASSWORD})
    assert r.status_code == 403 and "reviewer role" in r.json()["error"]
    headers = login(client)
    # A free-text reviewer name is refused: the account is the reviewer.
    r = client.post(f"/api/items/{pid}/review", json={"reviewer": "mallory", "action": "approve"}, headers=headers)
    assert r.status_code == 400 and "reviewer" in r.json()["error"]
    r = client.post(f"/api/items/{pid}/review", json={"action": "approve"}, headers=headers)
    assert r.status_code == 200 and r.json()["reviewer"] == "rita"
    (event,) = store.history(pid)
    assert (event["reviewer"], event["user_id"]) == ("rita", accounts.get("rita").id)
    # Admins may review too; a logged-out session may not.
    admin = login(client, "root")
    assert client.post(f"/api/items/{store.items()[1]['pair_id']}/review", json={"action": "reject"},
                       headers=admin).json()["reviewer"] == "root"
    client.post("/api/logout", headers=headers)
    assert client.get("/api/stats", headers=headers).status_code == 401
    # Disabling an account ends its sessions.
    admin_again = login(client, "root")
    accounts.set_disabled("root")
    assert client.get("/api/stats", headers=admin_again).status_code == 401


def test_refusals_limits_and_origins(app_parts):
    store, _accounts, client = app_parts
    headers = login(client)
    pid = store.items()[0]["pair_id"]
    assert client.get("/api/items/no-such-id", headers=headers).status_code == 404
    assert "limit must be an integer" in client.get("/api/items?limit=abc", headers=headers).json()["error"]
    assert client.get("/api/items?limit=100000", headers=headers).status_code == 400
    assert client.get("/api/items?limit=500", headers=headers).status_code == 200
    big = client.post(f"/api/items/{pid}/review", content=b'{"action": "edit", "answer": "' + b"x" * 1_100_000 + b'"}',
                      headers={**headers, "Content-Type": "application/json"})
    assert big.status_code == 413 and "limit" in big.json()["error"]
    cross = client.post(f"/api/items/{pid}/review", json={"action": "approve"},
                        headers={**headers, "Origin": "http://evil.example"})
    assert cross.status_code == 403 and "evil.example" in cross.json()["error"]
    same = client.post(f"/api/items/{pid}/review", json={"action": "approve"},
                       headers={**headers, "Origin": "http://review.test"})
    assert same.status_code == 200
    assert [e["action"] for e in store.history(pid)] == ["approve"]


def test_the_login_page_sets_a_strict_cookie_and_never_redirects_away(app_parts):
    _store, _accounts, client = app_parts
    r = client.post("/login", data={"name": "rita", "password": PASSWORD, "next": "https://evil.example/"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/stats").status_code == 200  # the cookie logs the page in
    bad = client.post("/login", data={"name": "rita", "password": "nope nope nope", "next": "/"})
    assert bad.status_code == 401 and "wrong password" in bad.text


# -- regressions found by the fuzzer (tests/integration/test_fuzz_web.py) -------------------------------


def test_starlette_refusals_are_json_errors_too(app_parts):
    """A wrong method (405) or unknown path (404) was answered {"detail": ...}, not {"error": ...}."""
    _store, _accounts, client = app_parts
    headers = login(client)
    r = client.delete("/api/stats", headers=headers)
    assert r.status_code == 405 and "GET" in r.headers["allow"]
    assert "DELETE is not allowed on /api/stats" in r.json()["error"]
    r = client.get("/api/no-such-route", headers=headers)
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_an_offset_past_64_bits_is_refused_not_a_500(app_parts):
    """GET /api/items?offset=99999999999999999999 raised OverflowError in SQLite: 500."""
    _store, _accounts, client = app_parts
    headers = login(client)
    r = client.get("/api/items?offset=99999999999999999999", headers=headers)
    assert r.status_code == 400 and "offset in [0, " in r.json()["error"]
    assert client.get("/api/items?offset=1000000000", headers=headers).status_code == 200


@pytest.mark.parametrize("body", [b'{"name": "\\ud800", "password": "x"}',  # UnicodeEncodeError in SQLite: 500
                                  b"[" * 100_000, b'{"a":' * 50_000])  # RecursionError in the JSON parser: 500
def test_a_login_body_no_parser_or_database_takes_is_400(app_parts, body):
    _store, _accounts, client = app_parts
    r = client.post("/api/login", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "request body must be a JSON object {name, password}"


@pytest.mark.parametrize("body", [b"{", b"[" * 100_000, b'{"action": 5}'])
def test_a_stranger_with_a_bad_body_gets_401_not_its_validation(app_parts, body):
    """FastAPI parsed (and refused, 400) the body of POST .../review before the login check ran."""
    store, _accounts, client = app_parts
    pid = store.items()[0]["pair_id"]
    r = client.post(f"/api/items/{pid}/review", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and "log in first" in r.json()["error"]
    # Logged in, the same body is a 400 that names the problem.
    r = client.post(f"/api/items/{pid}/review", content=body, headers={**login(client), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]
    assert store.stats()["events"] == 0
