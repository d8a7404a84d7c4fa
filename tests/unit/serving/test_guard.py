import asyncio
import json

import pytest

from app.serving.guard import Limits, RequestGuard, check_auth, check_body

MODELS = {"base", "tuned"}
LIM = Limits(max_body_bytes=2000, max_prompt_chars=100, max_tokens=256)


def chat(**kw):
    body = {"model": "base", "messages": [{"role": "user", "content": "hello"}]}
    body.update(kw)
    return json.dumps(body).encode()


def test_good_requests_pass():
    assert check_body("/v1/chat/completions", chat(temperature=0.7, max_tokens=10, stream=True), MODELS, LIM) is None
    comp = json.dumps({"model": "tuned", "prompt": "Once upon", "max_tokens": 5}).encode()
    assert check_body("/v1/completions", comp, MODELS, LIM) is None


@pytest.mark.parametrize("raw, status, code, words", [
    (b"{not json", 400, "invalid_json", "not valid JSON"),
    (b"[1, 2]", 400, "invalid_json", "JSON object"),
    (b"\xff\xfe{}", 400, "invalid_encoding", "UTF-8"),
    (b"x" * 2001, 413, "body_too_large", "2001 bytes"),
    (json.dumps({"messages": []}).encode(), 400, "invalid_parameter", "'model' is required"),
    (chat(model="nope"), 404, "model_not_found", "'nope' does not exist; available: base, tuned"),
    (chat(messages=[]), 400, "invalid_parameter", "non-empty list"),
    (chat(messages=[{"role": "user", "content": ""}]), 400, "empty_prompt", "empty"),
    (chat(messages=["hi"]), 400, "invalid_parameter", "messages[0]"),
    (chat(messages=[{"role": "user", "content": "a" * 101}]), 400, "prompt_too_long", "101 characters"),
    (chat(temperature=3), 400, "invalid_parameter", "'temperature' must be in [0, 2]"),
    (chat(temperature="hot"), 400, "invalid_parameter", "'temperature' must be a number"),
    (chat(top_p=0), 400, "invalid_parameter", "'top_p' must be in (0, 1]"),
    (chat(max_tokens=0), 400, "invalid_parameter", "'max_tokens' must be in [1, 256]"),
    (chat(max_tokens=10_000), 400, "invalid_parameter", "[1, 256]"),
    (chat(max_tokens=2.5), 400, "invalid_parameter", "must be an integer"),
    (chat(n=0), 400, "invalid_parameter", "'n'"),
    (chat(stream="yes"), 400, "invalid_parameter", "'stream' must be true or false"),
])
def test_bad_requests_rejected_with_reason(raw, status, code, words):
    r = check_body("/v1/chat/completions", raw, MODELS, LIM)
    assert r is not None and (r.status, r.code) == (status, code)
    assert words in r.message
    err = json.loads(r.body())["error"]
    assert err["code"] == code and words in err["message"]


def test_completion_prompt_rules():
    for prompt in ("", "   ", [], [""], 5):
        body = json.dumps({"model": "base", "prompt": prompt}).encode()
        assert check_body("/v1/completions", body, MODELS, LIM).status == 400


def test_api_key():
    lim = Limits(api_key="s3cret")
    assert check_auth("/v1/models", "Bearer s3cret", lim) is None
    assert check_auth("/v1/models", "bearer s3cret", lim) is None
    for bad in (None, "", "Bearer wrong", "Basic s3cret", "s3cret"):
        r = check_auth("/v1/models", bad, lim)
        assert r.status == 401 and json.loads(r.body())["error"]["type"] == "authentication_error"
    assert check_auth("/-/healthz", None, lim) is None
    assert check_auth("/v1/models", None, Limits()) is None


def run_asgi(guard, path, body, chunks=1, headers=()):
    sent = []
    parts = [body[i::chunks] for i in range(chunks)] if chunks > 1 else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive():
        return messages.pop(0)

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
    asyncio.run(guard(scope, receive, send))
    return sent


def test_middleware_replays_good_body_and_answers_bad_itself():
    received = {}

    async def app(scope, receive, send):
        m = await receive()
        received["body"] = m["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})

    guard = RequestGuard(app, MODELS, LIM)
    good = chat(max_tokens=3)
    sent = run_asgi(guard, "/v1/chat/completions", good)
    assert received["body"] == good and sent[0]["status"] == 200
    received.clear()
    sent = run_asgi(guard, "/v1/chat/completions", chat(model="nope"))
    assert "body" not in received and sent[0]["status"] == 404
    assert json.loads(sent[1]["body"])["error"]["code"] == "model_not_found"
    sent = run_asgi(guard, "/v1/chat/completions", b"y" * 5000, chunks=3)
    assert sent[0]["status"] == 413
    assert "exceeds the limit of 2000 bytes" in json.loads(sent[1]["body"])["error"]["message"]


def test_split_cores_disjoint():
    from app.serving.builder import split_cores

    assert split_cores(1, 2) == ["0-1"]
    assert split_cores(2, 2) == ["0", "1"]
    assert split_cores(3, 8) == ["0-2", "3-5", "6-7"]
    assert split_cores(3, 2) == ["0", "1", "0"]
