"""Property-based tests of the request guard (Hypothesis): whatever a client sends, the guard answers
with a well-formed 4xx or lets the request through unchanged, and never fails itself.

Bounded: a few hundred examples per property, a few seconds in all; no example database is written.
"""

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.serving.guard import (
    CHECKED_ROUTES,
    REFUSED_ROUTES,
    Limits,
    Rejection,
    RequestGuard,
    check_body,
)

MODELS = {"base", "tuned"}
LIM = Limits(max_body_bytes=4000, max_prompt_chars=300, max_tokens=64)
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=150)

PATHS = CHECKED_ROUTES + REFUSED_ROUTES + ("/v1/models", "/v1/other", "/", "/v1/chat/completions/", "/tokenize/")
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1]) | st.floats() | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
# Keys the guard reads, and a few it does not: the mutations land on checked fields often.
FIELDS = ["model", "messages", "prompt", "tokens", "temperature", "top_p", "max_tokens", "max_completion_tokens", "n",
          "presence_penalty", "frequency_penalty", "top_k", "seed", "stream", "stop", "logit_bias", "logprobs",
          "top_logprobs", "tools", "tool_choice", "user", "add_special_tokens", "return_token_strs", "echo", "x"]
VALID = {
    "/v1/chat/completions": {"model": "base", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8,
                             "temperature": 0.5, "stop": ["\n"], "logprobs": True, "top_logprobs": 2, "seed": 1,
                             "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
    "/v1/completions": {"model": "tuned", "prompt": "Once upon", "max_tokens": 8, "logprobs": 1,
                        "logit_bias": {"11": 1.5}, "user": "u"},
    "/tokenize": {"model": "base", "prompt": "hello"},
    "/detokenize": {"model": "base", "tokens": [1, 2, 3]},
}


def encode(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def well_formed(r: Rejection | None) -> None:
    if r is None:
        return
    assert isinstance(r, Rejection) and r.status in (400, 404, 413) and r.message.strip() and r.code
    err = json.loads(r.body())["error"]
    assert err["message"] == r.message and err["type"] == "invalid_request_error"
    assert err["param"] is None or (isinstance(err["param"], str) and err["param"])


@FUZZ
@given(path=st.sampled_from(PATHS), value=json_values)
def test_any_json_value_gets_none_or_a_well_formed_rejection(path, value):
    well_formed(check_body(path, encode(value), MODELS, LIM))


@FUZZ
@given(path=st.sampled_from(PATHS), raw=st.binary(max_size=300))
def test_any_bytes_get_none_or_a_well_formed_rejection(path, raw):
    well_formed(check_body(path, raw, MODELS, LIM))


@FUZZ
@given(route=st.sampled_from(sorted(VALID)), field=st.sampled_from(FIELDS), value=json_values, delete=st.booleans())
def test_one_field_of_a_valid_request_mutated(route, field, value, delete):
    body = dict(VALID[route])
    if delete:
        body.pop(field, None)
    else:
        body[field] = value
    well_formed(check_body(route, encode(body), MODELS, LIM))


MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "x"]


@FUZZ
@given(field=st.sampled_from(MESSAGE_FIELDS), value=json_values, where=st.integers(0, 2))
def test_one_field_of_a_chat_message_mutated(field, value, where):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "Hello"}]
    messages[where] = {**messages[where], field: value}
    body = {**VALID["/v1/chat/completions"], "messages": messages}
    well_formed(check_body("/v1/chat/completions", encode(body), MODELS, LIM))


@FUZZ
@given(route=st.sampled_from(sorted(VALID)), value=json_values)
def test_a_whole_valid_request_wrapped_or_replaced(route, value):
    for body in ([VALID[route]], {"request": VALID[route]}, value, {**VALID[route], **({"extra": value})}):
        well_formed(check_body(route, encode(body), MODELS, LIM))


token_ids = st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=64)
words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=60).filter(str.strip)
chat_requests = st.fixed_dictionaries(
    {"model": st.sampled_from(sorted(MODELS)),
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "developer"]),
                                                 "content": words}), min_size=1, max_size=4)},
    optional={"temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "max_tokens": st.integers(1, 64),
              "n": st.integers(1, 16), "seed": st.integers(-(2**63), 2**63 - 1), "stream": st.booleans(),
              "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=4)),
              "logit_bias": st.dictionaries(st.integers(0, 200_000).map(str), st.floats(-100, 100), max_size=5),
              "logprobs": st.booleans(), "top_logprobs": st.integers(0, 20), "user": st.text(max_size=10),
              "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
              "top_k": st.integers(-1, 100),
              "tools": st.lists(st.builds(lambda n: {"type": "function", "function": {"name": n}}, words), max_size=2)},
).map(lambda b: b | {"logprobs": True} if "top_logprobs" in b else b)
completion_requests = st.fixed_dictionaries(
    {"model": st.sampled_from(sorted(MODELS)),
     "prompt": st.one_of(words, st.lists(words, min_size=1, max_size=3), token_ids,
                         st.lists(token_ids, min_size=1, max_size=3))},
    optional={"max_tokens": st.integers(1, 64), "logprobs": st.integers(0, 20), "seed": st.integers(0, 2**32),
              "stop": st.lists(st.text(max_size=5), max_size=4), "temperature": st.floats(0, 2)})


@FEW
@given(body=chat_requests)
def test_valid_chat_requests_pass(body):
    assert check_body("/v1/chat/completions", encode(body), MODELS, Limits(max_prompt_chars=10_000)) is None


@FEW
@given(body=completion_requests)
def test_valid_completion_requests_pass(body):
    assert check_body("/v1/completions", encode(body), MODELS, Limits(max_prompt_chars=10_000, max_tokens=64)) is None


# -- the ASGI middleware itself: refused requests never reach the app; accepted ones byte-identical ---------


def drive(limits: Limits, method: str, path: str, raw: bytes, chunks: int, key: str | None):
    """Send one request through the guard in front of an app that records what reaches it."""
    reached: list[tuple[str, bytes]] = []
    parts = [raw[i::chunks] for i in range(chunks)] if chunks > 1 else [raw]
    wire = b"".join(parts)  # what the client sent, in order
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def app(scope, receive, send):
        body, more = b"", True
        while more:
            m = await receive()
            body += m.get("body", b"")
            more = m.get("more_body", False)
        reached.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(m):
        sent.append(m)

    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    asyncio.run(RequestGuard(app, MODELS, limits)(scope, receive, send))
    return wire, reached, sent


bodies = st.one_of(json_values.map(encode), st.binary(max_size=200), st.builds(encode, chat_requests),
                   st.builds(encode, completion_requests), st.sampled_from([encode(v) for v in VALID.values()]),
                   st.integers(3990, 4010).map(lambda n: b"x" * n))
KEYED = Limits(max_body_bytes=LIM.max_body_bytes, max_prompt_chars=LIM.max_prompt_chars, max_tokens=LIM.max_tokens,
               api_key="k")


@FEW
@given(method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "OPTIONS"]), path=st.sampled_from(PATHS), raw=bodies,
       chunks=st.integers(1, 4), key=st.sampled_from([None, "k", "k", "wrong"]))
def test_the_middleware_lets_through_exactly_what_it_accepts(method, path, raw, chunks, key):
    wire, reached, sent = drive(KEYED, method, path, raw, chunks, key)
    route = path.rstrip("/") or "/"
    if sent[0]["status"] != 299:  # answered by the guard: an OpenAI error, and the app never saw the request
        assert not reached and sent[0]["status"] in (400, 401, 404, 413)
        err = json.loads(sent[1]["body"])["error"]
        assert err["message"] and err["code"]
        return
    # Reached the app: once, unchanged, and only what the guard accepts.
    assert reached == [(path, wire)]
    assert key == "k" and route not in REFUSED_ROUTES
    if method not in ("GET", "HEAD", "OPTIONS"):
        assert len(wire) <= LIM.max_body_bytes
        if method == "POST" and route in CHECKED_ROUTES:
            assert check_body(path, wire, MODELS, LIM) is None


@FEW
@given(path=st.sampled_from(CHECKED_ROUTES), raw=bodies, chunks=st.integers(1, 4))
def test_the_middleware_agrees_with_check_body(path, raw, chunks):
    wire, reached, sent = drive(LIM, "POST", path, raw, chunks, None)
    expected = check_body(path, wire, MODELS, LIM)
    if expected is None:
        assert sent[0]["status"] == 299 and reached == [(path, wire)]
    else:
        assert not reached and sent[0]["status"] == expected.status
