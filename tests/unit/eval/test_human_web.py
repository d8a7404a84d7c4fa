import pytest
from fastapi.testclient import TestClient

from app.eval.human import HumanEvalStore
from app.eval.human_web import create_app
from tests.unit.eval.test_human import eval_run

UNKNOWN = "unknown study, annotator, password or token"


@pytest.fixture
def client(tmp_path):
    store = HumanEvalStore(f"sqlite:///{tmp_path / 'h.db'}")
    made = store.create_study("s1", eval_run(tmp_path / "run"), ["ann", "bob"], per_item=2, examples=2, seed=0)
    with TestClient(create_app(store)) as c:
        yield c, made["tokens"]
    store.close()


@pytest.mark.parametrize("body", [
    {"study": "s1", "name": "ann", "token": "wrong"},
    {"study": "s1", "name": "ann", "token": ""},
    {"study": "s1", "name": "nobody", "token": "wrong"},
    {"study": "s2", "name": "ann", "token": "TOKEN"},  # ann's real token, another study
    {"study": "s1", "name": "bob", "token": "TOKEN"},  # ann's token, bob's name
])
def test_a_failed_api_login_is_401_with_one_message(client, body):
    c, tokens = client
    body = {k: tokens["ann"] if v == "TOKEN" else v for k, v in body.items()}
    r = c.post("/api/login", json=body)
    assert r.status_code == 401 and r.json() == {"error": UNKNOWN}
    assert "set-cookie" not in r.headers


@pytest.mark.parametrize("content, says", [
    (b"not json", "the body must be JSON"),
    (b"[1, 2]", "the body must be a JSON object"),
    (b'"ann"', "the body must be a JSON object"),
    (b'{"study": "s1", "name": "ann"}', "missing or not a string: ['token']"),
    (b"{}", "missing or not a string: ['study', 'name', 'token']"),
    (b'{"study": "s1", "name": "ann", "token": 123}', "missing or not a string: ['token']"),
    (b'{"study": "s1", "name": null, "token": "x"}', "missing or not a string: ['name']"),
])
def test_a_malformed_api_login_is_400(client, content, says):
    c, _tokens = client
    r = c.post("/api/login", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400 and says in r.json()["error"]


def test_the_right_token_logs_in_and_the_session_works(client):
    c, tokens = client
    r = c.post("/api/login", json={"study": " s1 ", "name": "ann", "token": tokens["ann"]})
    assert r.status_code == 200
    auth = {"Authorization": f"Bearer {r.json()['session']}"}
    assert c.get("/api/progress", headers=auth).json() == {"done": 0, "total": 6}
    assert c.get("/api/progress").status_code == 401


def test_the_html_login_still_answers_401_with_the_form(client):
    c, tokens = client
    r = c.post("/login", data={"study": "s1", "name": "ann", "token": "wrong"}, follow_redirects=False)
    assert r.status_code == 401 and UNKNOWN in r.text and "<form" in r.text
    r = c.post("/login", data={"study": "s1", "name": "ann", "token": tokens["ann"]}, follow_redirects=False)
    assert r.status_code == 303 and "he_session" in r.headers["set-cookie"]
