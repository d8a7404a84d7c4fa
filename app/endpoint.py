"""Client side of OpenAI-compatible endpoints (ours on Ray Serve, or any a user names).

URLs and keys (:func:`serving_key`: the one reader of our endpoint's key), the model list, a
tolerant response reader, and :class:`ChatRequester`, the Ray Data actor that posts chat requests
with retries, deadlines and a rate limit. Shared by the dataset stage (LLM generation), evaluation
(answering, the judge) and serving (the app's builder, the gate, the sweep). Imports nothing from
the stages.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

from app.errors import ConfigError
from app.serving.config import ServingConfig


def base_url(s: ServingConfig) -> str:
    return f"http://{s.host}:{s.port}"


def external_endpoint(url: str, api_key_env: str | None, what: str,
                      error: type[Exception]) -> tuple[str, str | None]:
    """(base URL ending in /v1, API key read from the named environment variable) of an
    OpenAI-compatible endpoint configured by URL; ``error`` names ``what`` when the key is unset."""
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise error(f"{what}: api_key_env names {api_key_env}, which is not set")
    base = url.rstrip("/")
    return (base if base.endswith("/v1") else base + "/v1"), key


def bearer(key: str | None) -> dict[str, str]:
    """The Authorization header of an OpenAI-compatible API key (none without a key)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def listed_models(base_v1: str, key: str | None, timeout: float = 10) -> set[str]:
    """Model ids an OpenAI-compatible endpoint lists at /models (raises httpx.HTTPError, ValueError,
    KeyError or TypeError when it does not answer properly)."""
    r = httpx.get(base_v1 + "/models", headers=bearer(key), timeout=timeout)
    r.raise_for_status()
    return {m["id"] for m in r.json().get("data", [])}


def serving_key(s: ServingConfig) -> str | None:
    """The API key of the project's endpoint, read from where ``s`` says it is (serving.api_key_env or
    serving.api_key_file; surrounding whitespace stripped), or None when the endpoint is open.

    The one place the key is resolved: the app's builder (the key travels in the app's middleware),
    and every client of the endpoint. ConfigError names the variable or file when there is no key.
    """
    if s.api_key_env:
        key = os.environ.get(s.api_key_env, "").strip()
        if not key:
            raise ConfigError(f"serving.api_key_env names {s.api_key_env}, which is not set (or empty) "
                              "in this environment")
        return key
    if s.api_key_file:
        path = Path(s.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(f"serving.api_key_file {path} cannot be read ({reason})") from None
        if not key:
            raise ConfigError(f"serving.api_key_file {path} is empty")
        return key
    return None


def headers(s: ServingConfig) -> dict[str, str]:
    """The Authorization header of the project's endpoint (none when it is open)."""
    return bearer(serving_key(s))


class TolerantResponse(aiohttp.ClientResponse):
    """An aiohttp response whose ``json()`` never raises and keeps the HTTP status of errors.

    Ray's HTTP stage calls ``response.json()`` on every non-retryable answer; a proxy's HTML error
    page or a truncated body would otherwise fail the whole Ray Data job.
    """

    async def json(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - same signature as aiohttp's
        text = await self.text(errors="replace")
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        if self.status != 200 or not isinstance(body, dict):
            return {"error": {"status": self.status, "body": text[:500] or "(empty body)"}}
        return body


def session_factory(timeout_s: float) -> Any:
    return functools.partial(aiohttp.ClientSession, timeout=aiohttp.ClientTimeout(total=timeout_s),
                             response_class=TolerantResponse)


def response_text(response: Any) -> tuple[str, str]:
    """(content, error) from an OpenAI chat completion body as the HTTP stage returns it."""
    if not isinstance(response, dict):
        return "", f"no response body ({type(response).__name__})"
    if response.get("error"):
        err = response["error"]
        return "", f"endpoint error: {json.dumps(err, default=str)[:300]}"
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return "", f"unexpected response shape: {json.dumps(response, default=str)[:300]}"
    return content or "", "" if content else "empty completion"


class ChatRequester:
    """Ray Data actor: posts each row's chat request (``body``, JSON) and returns ``output`` / ``error``.

    Up to ``inflight`` requests at once per actor, at most ``qps`` per second when set. 408/429/5xx, connection errors and timeouts are
    retried ``max_retries`` times with exponential backoff; what still fails, or answers 4xx, or
    answers something that is not a chat completion, comes back as ``error`` with its reason.
    """

    RETRY = {408, 429, 500, 502, 503, 504}

    LATE = "!late"  # the marker of a request left unasked because the deadline had passed

    def __init__(self, url: str, api_key: str | None, timeout_s: float, max_retries: int, retry_wait_s: float,
                 inflight: int, deadline: float | None = None, qps: float | None = None):
        self.url, self.timeout_s, self.deadline, self.qps = url, timeout_s, deadline, qps
        self._next_send = 0.0  # qps: when this actor may send its next request
        self.max_retries, self.retry_wait_s, self.inflight = max_retries, retry_wait_s, inflight
        self.headers = {"Content-Type": "application/json", **bearer(api_key)}

    async def _one(self, session: Any, sem: Any, body: str) -> tuple[str, str]:
        last = ""
        async with sem:
            for attempt in range(self.max_retries + 1):
                if attempt:
                    await asyncio.sleep(self.retry_wait_s * 2 ** (attempt - 1))
                timeout = self.timeout_s
                if self.deadline is not None:  # the first wave ends on time, whatever the endpoint does
                    left = self.deadline - time.time()
                    if left <= 0:
                        return "", last if attempt else self.LATE
                    timeout = min(timeout, max(left, 1.0))
                if self.qps:  # one request every 1/qps seconds from this actor, retries included
                    now = time.time()
                    wait, self._next_send = max(0.0, self._next_send - now), max(now, self._next_send) + 1 / self.qps
                    await asyncio.sleep(wait)
                try:
                    r = await session.post(self.url, content=body, headers=self.headers, timeout=timeout)
                except httpx.TimeoutException:
                    last = f"timed out after {timeout:g} s"
                    continue
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"[:300]
                    continue
                if r.status_code in self.RETRY:
                    last = f"endpoint error: HTTP {r.status_code} {r.text[:300]}"
                    continue
                try:
                    payload = r.json()
                except ValueError:
                    payload = None
                if r.status_code != 200 or not isinstance(payload, dict):
                    return "", f"endpoint error: HTTP {r.status_code} {r.text[:300] or '(empty body)'}"
                return response_text(payload)
        return "", f"{last} ({self.max_retries + 1} tries)"

    async def _all(self, bodies: list[str]) -> list[tuple[str, str]]:
        sem = asyncio.Semaphore(self.inflight)
        async with httpx.AsyncClient() as session:
            return await asyncio.gather(*(self._one(session, sem, b) for b in bodies))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        results = asyncio.run(self._all([str(b) for b in batch["body"]]))
        return {"key": batch["key"], "output": np.array([r[0] for r in results], dtype=object),
                "error": np.array([r[1] for r in results], dtype=object)}
