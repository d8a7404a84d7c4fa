"""An async load generator for OpenAI-compatible endpoints, with vLLM's benchmark metrics.

Definitions follow vLLM's ``benchmark_serving``: TTFT is the time to the first streamed content;
TPOT per request is (E2E - TTFT) / (output tokens - 1); ITL is every gap between consecutive
streamed chunks; throughput counts completed requests and output tokens over the wall time;
goodput counts requests that met every SLO.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import httpx

# Deferred imports: pydoc_data is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""


@dataclass(frozen=True)
class SLO:
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def met(self, r: RequestResult) -> bool:
        if not r.ok:
            return False
        if self.ttft_s is not None and r.ttft > self.ttft_s:
            return False
        if self.e2e_s is not None and r.e2e > self.e2e_s:
            return False
        if self.tpot_s is not None and tpot(r) > self.tpot_s:
            return False
        return True


def tpot(r: RequestResult) -> float:
    return (r.e2e - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(results: list[RequestResult], wall_s: float, slo: SLO | None = None) -> dict[str, float]:
    """Aggregate figures over one load run (times in milliseconds, throughput per second)."""
    ok = [r for r in results if r.ok]
    out: dict[str, float] = {
        "requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "wall_s": wall_s,
        "request_throughput": len(ok) / wall_s if wall_s > 0 else 0.0,
        "output_throughput": sum(r.output_tokens for r in ok) / wall_s if wall_s > 0 else 0.0,
        "total_output_tokens": sum(r.output_tokens for r in ok),
    }
    series = {
        "ttft": [r.ttft for r in ok],
        "tpot": [tpot(r) for r in ok if r.output_tokens > 1],
        "itl": [x for r in ok for x in r.itl],
        "e2e": [r.e2e for r in ok],
    }
    for name, values in series.items():
        ms = [v * 1000 for v in values]
        out[f"mean_{name}_ms"] = statistics.fmean(ms) if ms else 0.0
        for q in (50, 90, 95, 99):
            out[f"p{q}_{name}_ms"] = percentile(ms, q)
    if slo is not None:
        good = sum(slo.met(r) for r in results)
        out["goodput"] = good / wall_s if wall_s > 0 else 0.0
        out["slo_attainment"] = good / len(results) if results else 0.0
    return out


Prompt = str | list[dict[str, Any]]  # a user message, or a whole chat message list


async def stream_chat(client: httpx.AsyncClient, url: str, model: str, prompt: Prompt, max_tokens: int,
                      headers: dict[str, str] | None = None, ignore_eos: bool = True) -> RequestResult:
    """One streamed chat completion, timed chunk by chunk."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        # Fixed output length, as vLLM's benchmark does: compares settings on equal work.
        body["ignore_eos"] = True
    start = time.perf_counter()
    last = start
    r = RequestResult(ok=False)
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers or {}) as resp:
            if resp.status_code != 200:
                r.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return r
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    r.output_tokens = chunk["usage"].get("completion_tokens", 0)
                    r.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    if r.ttft == 0.0:
                        r.ttft = now - start
                    else:
                        r.itl.append(now - last)
                    last = now
        r.e2e = time.perf_counter() - start
        r.ok = r.ttft > 0
        if not r.ok:
            r.error = "stream ended without content"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        r.error = f"{type(exc).__name__}: {exc}"
    return r


async def run_load(url: str, model: str, prompts: Sequence[Prompt], concurrency: int, num_requests: int,
                   max_tokens: int, headers: dict[str, str] | None = None, seed: int = 0,
                   timeout_s: float = 600) -> tuple[list[RequestResult], float]:
    """``num_requests`` streamed requests with at most ``concurrency`` in flight (closed loop)."""
    rng = random.Random(seed)
    order = [prompts[rng.randrange(len(prompts))] for _ in range(num_requests)]
    queue: asyncio.Queue[Prompt] = asyncio.Queue()
    for p in order:
        queue.put_nowait(p)
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            results.append(await stream_chat(client, url, model, prompt, max_tokens, headers))

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(concurrency))), timeout_s)
    return results, time.perf_counter() - start


def benchmark_prompts(n: int = 64, seed: int = 0) -> list[str]:
    """Questions over the Python reference's own topics (offline, varied lengths)."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    keys = sorted(topics)
    rng.shuffle(keys)
    out = []
    for key in keys[:n]:
        text = " ".join(topics[key].split())[:600]
        out.append(f"Read this excerpt from the Python documentation and explain it briefly.\n\n{text}")
    return out


def as_dict(results: list[RequestResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
