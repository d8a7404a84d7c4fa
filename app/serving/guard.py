"""Request checks in front of the OpenAI-compatible routes.

vLLM and Ray Serve validate requests too, but some bad inputs reach them as 500s or as errors
deep inside the engine. These checks answer every malformed request with a 4xx in OpenAI's
error shape before it costs anything, and leave the server serving.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
OPEN_ROUTES = ("/-/healthz", "/-/routes", "/health")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000
    max_prompt_chars: int = 32_000
    max_tokens: int = 2048
    api_key: str | None = None


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


def check_auth(path: str, authorization: str | None, limits: Limits) -> Rejection | None:
    if limits.api_key is None or path in OPEN_ROUTES:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), limits.api_key.encode()):
        return Rejection(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", "invalid_api_key")
    return None


def _number(body: dict[str, Any], key: str, lo: float, hi: float, integer: bool = False,
            lo_open: bool = False) -> Rejection | None:
    if key not in body or body[key] is None:
        return None
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        kind = "an integer" if integer else "a number"
        return Rejection(400, f"'{key}' must be {kind}, got {v!r}", "invalid_parameter", key)
    if v < lo or v > hi or (lo_open and v == lo):
        lo_b = "(" if lo_open else "["
        return Rejection(400, f"'{key}' must be in {lo_b}{lo:g}, {hi:g}], got {v!r}", "invalid_parameter", key)
    return None


def _prompt_chars(path: str, body: dict[str, Any]) -> tuple[int, Rejection | None]:
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 0, Rejection(400, "'messages' must be a non-empty list", "invalid_parameter", "messages")
        total = 0
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m:
                return 0, Rejection(400, f"messages[{i}] must be an object with a 'role'", "invalid_parameter",
                                    "messages")
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            total += len(content or "") if isinstance(content, str) else 0
        if total == 0:
            return 0, Rejection(400, "the prompt is empty: every message has empty content", "empty_prompt",
                                "messages")
        return total, None
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    else:
        return 0, Rejection(400, "'prompt' must be a non-empty string or list of strings", "invalid_parameter",
                            "prompt")
    if any(not p.strip() for p in prompts):
        return 0, Rejection(400, "the prompt is empty", "empty_prompt", "prompt")
    return max(len(p) for p in prompts), None


def check_body(path: str, raw: bytes, known_models: set[str], limits: Limits) -> Rejection | None:
    """The first problem with a generation request body, or None when it may go on to the engine."""
    if len(raw) > limits.max_body_bytes:
        return Rejection(413, f"request body is {len(raw)} bytes; the limit is {limits.max_body_bytes}",
                         "body_too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(400, f"request body is not valid UTF-8 (byte {exc.start})", "invalid_encoding")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        return Rejection(400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                         "invalid_json")
    if not isinstance(body, dict):
        return Rejection(400, "request body must be a JSON object", "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Rejection(400, "'model' is required", "invalid_parameter", "model")
    if model not in known_models:
        return Rejection(404, f"model {model!r} does not exist; available: {', '.join(sorted(known_models))}",
                         "model_not_found", "model")
    chars, problem = _prompt_chars(path, body)
    if problem:
        return problem
    if chars > limits.max_prompt_chars:
        return Rejection(400, f"prompt has {chars} characters; the limit is {limits.max_prompt_chars}",
                         "prompt_too_long", "messages" if "messages" in body else "prompt")
    for check in (
        _number(body, "temperature", 0, 2),
        _number(body, "top_p", 0, 1, lo_open=True),
        _number(body, "max_tokens", 1, limits.max_tokens, integer=True),
        _number(body, "max_completion_tokens", 1, limits.max_tokens, integer=True),
        _number(body, "n", 1, 16, integer=True),
        _number(body, "presence_penalty", -2, 2),
        _number(body, "frequency_penalty", -2, 2),
        _number(body, "top_k", -1, 1_000_000, integer=True),
    ):
        if check:
            return check
    if "stream" in body and not isinstance(body["stream"], bool):
        return Rejection(400, f"'stream' must be true or false, got {body['stream']!r}", "invalid_parameter",
                         "stream")
    return None


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class RequestGuard:
    """Pure ASGI middleware: buffers a generation request's body (up to the limit), checks it, and
    replays it to the app unchanged, or answers the rejection itself."""

    def __init__(self, app: ASGIApp, known_models: set[str], limits: Limits):
        self.app, self.known_models, self.limits = app, known_models, limits

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = check_auth(path, headers.get("authorization"), self.limits)
        if problem is None and scope.get("method") == "POST" and path in GENERATION_ROUTES:
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= self.limits.max_body_bytes + 1:
                    chunks.append(chunk)
                more = message.get("more_body", False)
            raw = b"".join(chunks)
            if size > self.limits.max_body_bytes:
                problem = Rejection(413, f"request body exceeds the limit of {self.limits.max_body_bytes} bytes",
                                    "body_too_large")
            else:
                problem = check_body(path, raw, self.known_models, self.limits)
            if problem is None:
                replayed = False

                async def replay() -> dict:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": raw, "more_body": False}
                    return await receive()

                return await self.app(scope, replay, send)
        if problem is None:
            return await self.app(scope, receive, send)
        payload = problem.body()
        await send({"type": "http.response.start", "status": problem.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
        return None
