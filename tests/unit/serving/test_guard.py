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


# -- the fields checked beyond the prompt, each refusal naming its field in `param` ---------------------------

def comp(**kw):
    body = {"model": "base", "prompt": "Once upon"}
    body.update(kw)
    return json.dumps(body).encode()


TOOL = {"type": "function", "function": {"name": "lookup", "description": "d", "parameters": {"type": "object"}}}


def test_good_requests_with_every_checked_field_pass():
    good = [
        chat(messages=[{"role": "system", "content": "be brief"}, {"role": "developer", "content": "x"},
                       {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "!"}]},
                       {"role": "assistant", "content": None, "tool_calls": []},
                       {"role": "tool", "content": "42", "tool_call_id": "1"}]),
        chat(stop="\n"), chat(stop=["a", "b", "c", "d"]), chat(stop=None), chat(stop=[]),
        chat(logit_bias={"50256": -100, "13": 2.5}), chat(logprobs=True, top_logprobs=20), chat(logprobs=False),
        chat(tools=[TOOL], tool_choice="auto"), chat(tools=[TOOL], tool_choice="required"),
        chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "lookup"}}), chat(tool_choice="none"),
        chat(user="u-1", seed=-3, top_k=-1), chat(seed=2**63 - 1),
        chat(messages=[{"role": "user", "content": "hi", "name": "ann"}]),
    ]
    for raw in good:
        assert check_body("/v1/chat/completions", raw, MODELS, LIM) is None, raw
    for raw in (comp(logprobs=5), comp(logprobs=0), comp(stop=["x"]), comp(seed=1, user="u"),
                comp(prompt=["a", "b"]), comp(prompt=[1, 2, 3]), comp(prompt=[[1, 2], [3]])):
        assert check_body("/v1/completions", raw, MODELS, LIM) is None, raw


@pytest.mark.parametrize("raw, param, words", [
    (chat(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role",
     "system, user, assistant, tool, developer"),
    (chat(messages=[{"role": ["user"], "content": "hi"}]), "messages[0].role", "must be one of"),
    (chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": 5}]), "messages[1].content",
     "messages[1].content must be a string or a list of text parts"),
    (chat(messages=[{"role": "user", "content": {"text": "hi"}}]), "messages[0].content", "string or a list"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content", "messages[0].content[0] must be a text part"),
    (chat(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]), "messages[0].content", "text part"),
    (chat(messages=[{"role": "user", "content": "hi", "name": 7}]), "messages[0].name", "must be a string"),
    (chat(messages=["hi"]), "messages[0]", "with a 'role'"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4 strings"),
    (chat(stop=5), "stop", "'stop' must be a string"),
    (chat(stop=["a", 1]), "stop", "list of at most 4 strings"),
    (chat(logit_bias=[1, 2]), "logit_bias", "object of token ids"),
    (chat(logit_bias={"hello": 1}), "logit_bias", "keys must be token ids"),
    (chat(logit_bias={"-1": 1}), "logit_bias", "keys must be token ids"),
    (chat(logit_bias={"5": 101}), "logit_bias", "[-100, 100]"),
    (chat(logit_bias={"5": "up"}), "logit_bias", "[-100, 100]"),
    (chat(logit_bias={"5": True}), "logit_bias", "numbers"),
    (chat(logprobs="yes"), "logprobs", "'logprobs' must be true or false"),
    (chat(logprobs=5), "logprobs", "true or false"),
    (chat(logprobs=True, top_logprobs=21), "top_logprobs", "[0, 20]"),
    (chat(logprobs=True, top_logprobs=1.5), "top_logprobs", "an integer"),
    (chat(top_logprobs=3), "top_logprobs", "needs 'logprobs': true"),
    (chat(tools={"type": "function"}), "tools", "list of function tools"),
    (chat(tools=[{"type": "retrieval"}]), "tools[0]", "type 'function'"),
    (chat(tools=[{"type": "function", "function": {"name": ""}}]), "tools[0].function.name", "non-empty string"),
    (chat(tools=[{"type": "function"}]), "tools[0].function", "an object"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]), "tools[0].function.parameters",
     "JSON Schema object"),
    (chat(tool_choice="always"), "tool_choice", "'none', 'auto', 'required'"),
    (chat(tool_choice="required"), "tool_choice", "needs 'tools'"),
    (chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "other"}}), "tool_choice",
     "not in 'tools'"),
    (chat(tool_choice={"type": "function"}), "tool_choice", "must be"),
    (chat(user=5), "user", "'user' must be a string"),
    (chat(seed=1.5), "seed", "'seed' must be an integer"),
    (chat(seed=True), "seed", "an integer"),
    (chat(seed=2**64), "seed", "'seed' must be in"),
    (chat(temperature=10**400), "temperature", "'temperature' must be in [0, 2]"),  # no float holds it
    (chat(temperature=True), "temperature", "must be a number"),
    (chat()[:-1] + b', "temperature": 1e400}', "temperature", "must be a number"),  # parses as inf
])
def test_chat_fields_refused_naming_the_field(raw, param, words):
    r = check_body("/v1/chat/completions", raw, MODELS, LIM)
    assert r is not None and r.status == 400 and words in r.message, (r, words)
    err = json.loads(r.body())["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw, code, words", [
    (b'{"model": "base", "model": "tuned", "messages": [{"role": "user", "content": "hi"}]}', "invalid_json",
     "duplicate key 'model'"),
    (b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "invalid_json",
     "NaN is not a JSON value"),
    (b'{"model": "base", "temperature": Infinity}', "invalid_json", "Infinity"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "nested too deeply"),
    (b'{"model": "base", "seed": ' + b"9" * 5000 + b"}", "invalid_json", "not valid JSON"),
])
def test_json_that_parsers_read_differently_is_refused(raw, code, words):
    r = check_body("/v1/chat/completions", raw, MODELS, Limits(max_body_bytes=1_000_000))
    assert r is not None and (r.status, r.code) == (400, code) and words in r.message, r


def test_completion_prompts_of_token_ids():
    lim = Limits(max_prompt_chars=100, max_tokens=8)
    assert check_body("/v1/completions", comp(prompt=list(range(8))), MODELS, lim) is None
    assert check_body("/v1/completions", comp(prompt=[[1] * 8, [2, 3]]), MODELS, lim) is None
    r = check_body("/v1/completions", comp(prompt=list(range(9))), MODELS, lim)
    assert (r.status, r.code, r.param) == (400, "prompt_too_long", "prompt") and "9 tokens; the limit is 8" in r.message
    # Each token counts at least one character: no more room than a text prompt.
    r = check_body("/v1/completions", comp(prompt=[1] * 6), MODELS, Limits(max_prompt_chars=5, max_tokens=100))
    assert r.code == "prompt_too_long" and "limit is 5" in r.message
    for bad, code in (([1, -2], "invalid_parameter"), ([1, 2.5], "invalid_parameter"), ([1, True], "invalid_parameter"),
                      ([[1], []], "empty_prompt"), ([[1], "a"], "invalid_parameter"), ([1, "a"], "invalid_parameter"),
                      ([[1, [2]]], "invalid_parameter"), ({"a": 1}, "invalid_parameter")):
        r = check_body("/v1/completions", comp(prompt=bad), MODELS, lim)
        assert r is not None and (r.status, r.code, r.param) == (400, code, "prompt"), (bad, r)


@pytest.mark.parametrize("raw, param, words", [
    (comp(logprobs=True), "logprobs", "an integer"),
    (comp(logprobs=21), "logprobs", "[0, 20]"),
    (comp(stop=["1", "2", "3", "4", "5"]), "stop", "at most 4"),
    (comp(logit_bias={"1": -101}), "logit_bias", "[-100, 100]"),
    (comp(seed="7"), "seed", "an integer"),
])
def test_completion_fields_refused_naming_the_field(raw, param, words):
    r = check_body("/v1/completions", raw, MODELS, LIM)
    assert r is not None and r.status == 400 and r.param == param and words in r.message, r


def test_tokenize_and_detokenize_bodies():
    tok = lambda **kw: json.dumps({"model": "base", **kw}).encode()  # noqa: E731
    assert check_body("/tokenize", tok(prompt="hello"), MODELS, LIM) is None
    assert check_body("/tokenize", tok(prompt="", add_special_tokens=False), MODELS, LIM) is None
    assert check_body("/detokenize", tok(tokens=[1, 2, 3]), MODELS, LIM) is None
    assert check_body("/detokenize", tok(tokens=[]), MODELS, LIM) is None
    for path, raw, status, param in [
        ("/tokenize", tok(prompt=5), 400, "prompt"),
        ("/tokenize", tok(prompt="a" * 101), 400, "prompt"),
        ("/tokenize", tok(messages=[{"role": "user", "content": "hi"}]), 400, "messages"),
        ("/tokenize", tok(prompt="a", add_special_tokens="no"), 400, "add_special_tokens"),
        ("/tokenize", json.dumps({"prompt": "a"}).encode(), 400, "model"),
        ("/tokenize", json.dumps({"model": "nope", "prompt": "a"}).encode(), 404, "model"),
        ("/detokenize", tok(tokens="1 2"), 400, "tokens"),
        ("/detokenize", tok(tokens=[1, -1]), 400, "tokens"),
        ("/detokenize", tok(tokens=[[1]]), 400, "tokens"),
        ("/detokenize", tok(tokens=[1] * 101), 400, "tokens"),
        ("/detokenize", tok(), 400, "tokens"),
    ]:
        r = check_body(path, raw, MODELS, LIM)
        assert r is not None and (r.status, r.param) == (status, param), (path, raw, r)


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/score", "/v1/audio/transcriptions", "/v1/embeddings/"])
def test_routes_of_other_model_kinds_are_refused(path):
    r = check_body(path, chat(), MODELS, LIM)
    assert r.status == 404 and r.code == "route_not_supported" and path.rstrip("/") in r.message
    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    sent = run_asgi(RequestGuard(app, MODELS, LIM), path, json.dumps({"model": "base", "input": "x"}).encode())
    assert not reached and sent[0]["status"] == 404
    # The key is asked for first: an unauthenticated caller learns nothing about the routes.
    sent = run_asgi(RequestGuard(app, MODELS, Limits(api_key="k")), path, b"{}")
    assert not reached and sent[0]["status"] == 401


def test_other_routes_pass_with_their_body_bounded():
    bodies = []

    async def app(scope, receive, send):
        m = await receive()
        bodies.append((scope["path"], m["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})

    guard = RequestGuard(app, MODELS, LIM)
    # Not a checked route: any body under the limit reaches the app unchanged, in one piece.
    sent = run_asgi(guard, "/v1/whatever", b"not json at all", chunks=3)
    assert sent[0]["status"] == 200 and bodies == [("/v1/whatever", b"not json at all"[0::3] + b"not json at all"[1::3]
                                                     + b"not json at all"[2::3])]
    sent = run_asgi(guard, "/v1/whatever", b"z" * 2001)
    assert sent[0]["status"] == 413 and len(bodies) == 1
    # A declared length far over the limit is answered before anything is read.
    read = []

    async def receive():
        read.append(1)
        return {"type": "http.request", "body": b"", "more_body": False}

    out = []

    async def send(m):
        out.append(m)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-length", str(10**9).encode())]}
    asyncio.run(guard(scope, receive, send))
    assert out[0]["status"] == 413 and not read and len(bodies) == 1


def test_the_route_is_matched_as_starlette_matches_it():
    received = []

    async def app(scope, receive, send):
        received.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})

    guard = RequestGuard(app, MODELS, LIM)
    for path in ("/v1/chat/completions/", "/llm/v1/chat/completions"):
        scope = {"type": "http", "method": "POST", "path": path, "root_path": "/llm" if path.startswith("/llm") else "",
                 "headers": []}
        sent = []

        async def receive():
            return {"type": "http.request", "body": chat(model="nope"), "more_body": False}

        async def send(m):
            sent.append(m)

        asyncio.run(guard(scope, receive, send))
        assert sent[0]["status"] == 404 and not received, path


def test_get_requests_pass_unread_and_limits_never_show_the_key():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive():
        raise AssertionError("a GET body is not read")

    sent = []

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": [(b"authorization", b"Bearer k")]}
    asyncio.run(RequestGuard(app, MODELS, Limits(api_key="k"))(scope, receive, send))
    assert sent[0]["status"] == 200
    assert "k-secret" not in repr(Limits(api_key="k-secret")) and "***" in repr(Limits(api_key="k-secret"))
