"""Request checks in front of the OpenAI-compatible routes.

vLLM and Ray Serve validate requests too, but some bad inputs reach them as 500s or as errors
deep inside the engine. These checks answer every malformed request with a 4xx in OpenAI's
error shape (``param`` naming the field) before it costs anything, and leave the server serving:

- every request with a body (POST, PUT, ...) is bounded by ``max_body_bytes`` (413);
- the routes Ray's OpenAI ingress offers for embedding, scoring and speech models are refused
  (404): the models served here generate text;
- the bodies of the generation routes (``/v1/chat/completions``, ``/v1/completions``) and of
  ``/tokenize`` / ``/detokenize`` are checked field by field (see :func:`check_body`).
"""

from __future__ import annotations

import hmac
import json
import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from app.web import replaying

GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
TOKEN_ROUTES = ("/tokenize", "/detokenize")
CHECKED_ROUTES = GENERATION_ROUTES + TOKEN_ROUTES
# What else Ray 2.60's ingress mounts (ray.llm._internal.serve.core.ingress.ingress.DEFAULT_ENDPOINTS):
# routes for embedding, scoring and transcription models, which this project does not serve.
REFUSED_ROUTES = ("/v1/embeddings", "/v1/score", "/v1/audio/transcriptions")
OFFERED_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize")
OPEN_ROUTES = ("/-/healthz", "/-/routes", "/health")
BODYLESS_METHODS = ("GET", "HEAD", "OPTIONS")
CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")
TOOL_CHOICES = ("none", "auto", "required")
MAX_STOP = 4
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100
INT64 = 2**63
# A body over the limit is still read (and dropped) up to this much more, so the client gets to read
# the 413; larger uploads are answered at once.
DRAIN_BYTES = 16 << 20


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000
    max_prompt_chars: int = 32_000
    # The model's context (max_model_len): no request may ask for more new tokens, nor send a
    # longer token-id prompt.
    max_tokens: int = 2048
    api_key: str | None = None

    def __repr__(self) -> str:  # never the key, in a log or a traceback
        key = "***" if self.api_key else None
        return (f"Limits(max_body_bytes={self.max_body_bytes}, max_prompt_chars={self.max_prompt_chars}, "
                f"max_tokens={self.max_tokens}, api_key={key})")


@dataclass(frozen=True)
class Rejection:
    status: int
    message: str
    code: str
    param: str | None = None

    def body(self) -> bytes:
        err = {"message": self.message, "type": "invalid_request_error" if self.status < 500 else "server_error",
               "param": self.param, "code": self.code}
        if self.status == 401:
            err["type"] = "authentication_error"
        return json.dumps({"error": err}).encode()


def route_of(path: str, root_path: str = "") -> str:
    """The route a request path names, as Starlette matches it: ``root_path`` (a Serve route
    prefix) taken off, a trailing slash too (Starlette redirects ``/v1/completions/`` there)."""
    if root_path and path.startswith(root_path) and path[len(root_path):len(root_path) + 1] in ("", "/"):
        path = path[len(root_path):]
    return path.rstrip("/") or "/"


def check_auth(path: str, authorization: str | None, limits: Limits) -> Rejection | None:
    if limits.api_key is None or route_of(path) in OPEN_ROUTES:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), limits.api_key.encode()):
        return Rejection(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", "invalid_api_key")
    return None


def check_route(path: str) -> Rejection | None:
    """A 404 for the routes of model kinds this project does not serve."""
    route = route_of(path)
    if route in REFUSED_ROUTES:
        return Rejection(404, f"{route} is not offered here: the served models generate text (routes: "
                         f"{', '.join(OFFERED_ROUTES)})", "route_not_supported")
    return None


def _show(v: Any, width: int = 60) -> str:
    try:
        text = repr(v)
    except (RecursionError, ValueError):  # nested about as deeply as the parser allows; a huge integer
        text = f"<{type(v).__name__}>"
    return text if len(text) <= width else text[:width - 3] + "..."


def _bad(message: str, param: str, code: str = "invalid_parameter") -> Rejection:
    return Rejection(400, message, code, param)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    # JSON integers are exact (even 400 digits, which no float holds); floats must be finite (1e400).
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _number(body: dict[str, Any], key: str, lo: float, hi: float, integer: bool = False,
            lo_open: bool = False) -> Rejection | None:
    if key not in body or body[key] is None:
        return None
    v = body[key]
    if not _is_number(v) or (integer and not _is_int(v)):
        kind = "an integer" if integer else "a number"
        return _bad(f"'{key}' must be {kind}, got {_show(v)}", key)
    if v < lo or v > hi or (lo_open and v == lo):
        lo_b = "(" if lo_open else "["
        return _bad(f"'{key}' must be in {lo_b}{lo:g}, {hi:g}], got {_show(v)}", key)
    return None


def _messages(messages: Any) -> tuple[int, Rejection | None]:
    """(characters of text, first problem) of a chat ``messages`` list."""
    if not isinstance(messages, list) or not messages:
        return 0, _bad("'messages' must be a non-empty list", "messages")
    total = 0
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(m, dict) or "role" not in m:
            return 0, _bad(f"{at} must be an object with a 'role'", at)
        if m["role"] not in CHAT_ROLES:
            return 0, _bad(f"{at}.role must be one of {', '.join(CHAT_ROLES)}; got {_show(m['role'])}",
                           f"{at}.role")
        if m.get("name") is not None and not isinstance(m["name"], str):
            return 0, _bad(f"{at}.name must be a string, got {_show(m['name'])}", f"{at}.name")
        content = m.get("content")
        if content is None or isinstance(content, str):
            total += len(content or "")
            continue
        if not isinstance(content, list):
            return 0, _bad(f"{at}.content must be a string or a list of text parts "
                           f"({{'type': 'text', 'text': ...}}), got {_show(content)}", f"{at}.content")
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                return 0, _bad(f"{at}.content[{j}] must be a text part {{'type': 'text', 'text': <string>}} "
                               f"(the served models read text only), got {_show(part)}", f"{at}.content")
            total += len(part["text"])
    if total == 0:
        return 0, Rejection(400, "the prompt is empty: every message has empty content", "empty_prompt", "messages")
    return total, None


def _token_ids(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(t) and 0 <= t < INT64 for t in v)


def _completion_prompt(prompt: Any, limits: Limits) -> Rejection | None:
    """A completion ``prompt``: a string, a list of strings, a token-id list or a list of token-id lists."""
    shapes = "a non-empty string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(prompt, str):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        return _bad(f"'prompt' must be {shapes}", "prompt")
    if all(isinstance(p, str) for p in prompt):
        if any(not p.strip() for p in prompt):
            return Rejection(400, "the prompt is empty", "empty_prompt", "prompt")
        chars = max(len(p) for p in prompt)
        if chars > limits.max_prompt_chars:
            return Rejection(400, f"prompt has {chars} characters; the limit is {limits.max_prompt_chars}",
                             "prompt_too_long", "prompt")
        return None
    if all(_is_int(p) for p in prompt):
        prompt = [prompt]
    if not all(isinstance(p, list) for p in prompt):
        return _bad(f"'prompt' must be {shapes}", "prompt")
    if any(not p for p in prompt):
        return Rejection(400, "the prompt is empty (a token-id list with no tokens)", "empty_prompt", "prompt")
    if not all(_token_ids(p) for p in prompt):
        return _bad("'prompt' token ids must be non-negative integers", "prompt")
    tokens = max(len(p) for p in prompt)
    # A token stands for at least one character: a token-id prompt gets no more room than a text one,
    # and never more than the model's context.
    limit = min(limits.max_tokens, limits.max_prompt_chars)
    if tokens > limit:
        return Rejection(400, f"prompt has {tokens} tokens; the limit is {limit} (the model's context, and "
                         "max_prompt_chars at one character a token)", "prompt_too_long", "prompt")
    return None


def _stop(body: dict[str, Any]) -> Rejection | None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return None
    if isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop):
        return None
    return _bad(f"'stop' must be a string or a list of at most {MAX_STOP} strings, got {_show(stop)}", "stop")


def _logit_bias(body: dict[str, Any]) -> Rejection | None:
    bias = body.get("logit_bias")
    if bias is None:
        return None
    if not isinstance(bias, dict):
        return _bad(f"'logit_bias' must be an object of token ids to numbers, got {_show(bias)}", "logit_bias")
    for k, v in bias.items():
        if not (k.isascii() and k.isdigit() and len(k) <= 19 and int(k) < INT64):
            return _bad(f"'logit_bias' keys must be token ids (digit strings), got {_show(k)}", "logit_bias")
        if not _is_number(v) or not -MAX_LOGIT_BIAS <= v <= MAX_LOGIT_BIAS:
            return _bad(f"'logit_bias' values must be numbers in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}], got "
                        f"{_show(v)} for token {k}", "logit_bias")
    return None


def _logprobs(path: str, body: dict[str, Any]) -> Rejection | None:
    if path.endswith("/chat/completions"):
        lp = body.get("logprobs")
        if lp is not None and not isinstance(lp, bool):
            return _bad(f"'logprobs' must be true or false, got {_show(lp)}", "logprobs")
        problem = _number(body, "top_logprobs", 0, MAX_LOGPROBS, integer=True)
        if problem:
            return problem
        if body.get("top_logprobs") is not None and lp is not True:
            return _bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return None
    return _number(body, "logprobs", 0, MAX_LOGPROBS, integer=True)


def _tools(body: dict[str, Any]) -> Rejection | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            return _bad(f"'tools' must be a list of function tools, got {_show(tools)}", "tools")
        for i, t in enumerate(tools):
            at = f"tools[{i}]"
            if not isinstance(t, dict) or t.get("type") != "function":
                return _bad(f"{at} must be an object with type 'function'", at)
            fn = t.get("function")
            if not isinstance(fn, dict):
                return _bad(f"{at}.function must be an object with a 'name'", f"{at}.function")
            if not isinstance(fn.get("name"), str) or not fn["name"]:
                return _bad(f"{at}.function.name must be a non-empty string", f"{at}.function.name")
            if fn.get("description") is not None and not isinstance(fn["description"], str):
                return _bad(f"{at}.function.description must be a string", f"{at}.function.description")
            if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
                return _bad(f"{at}.function.parameters must be a JSON Schema object", f"{at}.function.parameters")
            names.append(fn["name"])
    if choice is None or choice == "none" or choice == "auto":
        return None
    if choice == "required":
        return None if names else _bad("'tool_choice' 'required' needs 'tools'", "tool_choice")
    shapes = "'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}"
    if not (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict)
            and isinstance(choice["function"].get("name"), str)):
        return _bad(f"'tool_choice' must be {shapes}, got {_show(choice)}", "tool_choice")
    if choice["function"]["name"] not in names:
        return _bad(f"'tool_choice' names function {_show(choice['function']['name'])}, which is not in 'tools'",
                    "tool_choice")
    return None


def _generation(path: str, body: dict[str, Any], limits: Limits) -> Rejection | None:
    if path.endswith("/chat/completions"):
        chars, problem = _messages(body.get("messages"))
        if problem:
            return problem
        if chars > limits.max_prompt_chars:
            return Rejection(400, f"prompt has {chars} characters; the limit is {limits.max_prompt_chars}",
                             "prompt_too_long", "messages")
    else:
        problem = _completion_prompt(body.get("prompt"), limits)
        if problem:
            return problem
    for check in (
        _number(body, "temperature", 0, 2),
        _number(body, "top_p", 0, 1, lo_open=True),
        _number(body, "max_tokens", 1, limits.max_tokens, integer=True),
        _number(body, "max_completion_tokens", 1, limits.max_tokens, integer=True),
        _number(body, "n", 1, 16, integer=True),
        _number(body, "presence_penalty", -2, 2),
        _number(body, "frequency_penalty", -2, 2),
        _number(body, "top_k", -1, 1_000_000, integer=True),
        _number(body, "seed", -INT64, INT64 - 1, integer=True),
    ):
        if check:
            return check
    if "stream" in body and not isinstance(body["stream"], bool):
        return _bad(f"'stream' must be true or false, got {_show(body['stream'])}", "stream")
    if body.get("user") is not None and not isinstance(body["user"], str):
        return _bad(f"'user' must be a string, got {_show(body['user'])}", "user")
    return (_stop(body) or _logit_bias(body) or _logprobs(path, body)
            or (_tools(body) if path.endswith("/chat/completions") else None))


def _tokenize(body: dict[str, Any], limits: Limits) -> Rejection | None:
    # Ray's ingress parses /tokenize bodies as vLLM's TokenizeCompletionRequest: a prompt, no messages.
    if "prompt" not in body and "messages" in body:
        return _bad("/tokenize takes a 'prompt' string here; chat 'messages' are not accepted", "messages")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        return _bad(f"'prompt' must be a string, got {_show(prompt)}", "prompt")
    if len(prompt) > limits.max_prompt_chars:
        return Rejection(400, f"prompt has {len(prompt)} characters; the limit is {limits.max_prompt_chars}",
                         "prompt_too_long", "prompt")
    for key in ("add_special_tokens", "return_token_strs"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            return _bad(f"'{key}' must be true or false, got {_show(body[key])}", key)
    return None


def _detokenize(body: dict[str, Any], limits: Limits) -> Rejection | None:
    tokens = body.get("tokens")
    if not _token_ids(tokens):
        return _bad("'tokens' must be a list of non-negative integer token ids", "tokens")
    if len(tokens) > limits.max_prompt_chars:
        return Rejection(400, f"'tokens' has {len(tokens)} ids; the limit is {limits.max_prompt_chars}",
                         "prompt_too_long", "tokens")
    return None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:  # parsers disagree on which one wins: the guard and the engine must read the same
            raise ValueError(f"duplicate key {_show(k)}")
        out[k] = v
    return out


def parse_json(text: str) -> tuple[Any, Rejection | None]:
    """(value, None) or (None, the 400 saying why ``text`` is not a plain JSON document)."""
    try:
        return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates), None
    except json.JSONDecodeError as exc:
        return None, Rejection(400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column "
                               f"{exc.colno}", "invalid_json")
    except RecursionError:
        return None, Rejection(400, "request body is not valid JSON: nested too deeply", "invalid_json")
    except ValueError as exc:  # NaN/Infinity, a duplicate key, an integer of thousands of digits
        return None, Rejection(400, f"request body is not valid JSON: {str(exc)[:120]}", "invalid_json")


def check_body(path: str, raw: bytes, known_models: set[str], limits: Limits) -> Rejection | None:
    """The first problem with a request body sent to ``path``, or None when it may go on to the engine.

    Every body is bounded by ``max_body_bytes``; the generation and token routes' bodies are checked
    field by field; the routes of other model kinds are refused.
    """
    route = route_of(path)
    refused = check_route(route)
    if refused:
        return refused
    if len(raw) > limits.max_body_bytes:
        return Rejection(413, f"request body is {len(raw)} bytes; the limit is {limits.max_body_bytes}",
                         "body_too_large")
    if route not in CHECKED_ROUTES:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(400, f"request body is not valid UTF-8 (byte {exc.start})", "invalid_encoding")
    body, problem = parse_json(text)
    if problem:
        return problem
    if not isinstance(body, dict):
        return Rejection(400, "request body must be a JSON object", "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _bad("'model' is required", "model")
    if model not in known_models:
        return Rejection(404, f"model {_show(model, 200)} does not exist; available: {', '.join(sorted(known_models))}",
                         "model_not_found", "model")
    if route == "/tokenize":
        return _tokenize(body, limits)
    if route == "/detokenize":
        return _detokenize(body, limits)
    return _generation(route, body, limits)


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class RequestGuard:
    """Pure ASGI middleware: refuses unauthenticated requests and unsupported routes, buffers every
    request body (up to the limit), checks it, and replays it to the app unchanged, or answers the
    rejection itself."""

    def __init__(self, app: ASGIApp, known_models: set[str], limits: Limits):
        self.app, self.known_models, self.limits = app, known_models, limits

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = route_of(scope.get("path", ""), scope.get("root_path", ""))
        method = str(scope.get("method", "GET")).upper()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = check_auth(route, headers.get("authorization"), self.limits) or check_route(route)
        if problem is None and method not in BODYLESS_METHODS:
            limit = self.limits.max_body_bytes
            declared = headers.get("content-length", "").strip()
            if declared.isascii() and declared.isdigit() and (len(declared) > 18
                                                              or int(declared) > limit + DRAIN_BYTES):
                problem = Rejection(413, f"request body is {declared[:20]} bytes; the limit is {limit}",
                                    "body_too_large")
            else:
                # Read to the end (what is over the limit is dropped, not kept): a server that answers
                # and closes while the client still sends can lose its answer to a TCP reset.
                chunks, size, more = [], 0, True
                while more and size <= limit + DRAIN_BYTES:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size <= limit:
                        chunks.append(chunk)
                    more = message.get("more_body", False)
                if size > limit:
                    problem = Rejection(413, f"request body exceeds the limit of {limit} bytes", "body_too_large")
                else:
                    raw = b"".join(chunks)
                    if method == "POST" and route in CHECKED_ROUTES:
                        problem = check_body(route, raw, self.known_models, self.limits)
                    if problem is None:
                        return await self.app(scope, replaying(raw, receive), send)
        if problem is None:
            return await self.app(scope, receive, send)
        payload = problem.body()
        await send({"type": "http.response.start", "status": problem.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
        return None
