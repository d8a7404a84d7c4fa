"""A live serving summary from the Prometheus metrics Ray exports (vLLM engine + Serve + node).

The same series feed the Ray dashboard's Serve and metrics views (and Grafana, where installed);
``app serve stats`` reads a node's metrics endpoint twice and prints latencies, rates, queue,
KV-cache use and memory per model.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

ENGINE_PREFIX = re.compile(r"^(ray_)?vllm[:_]")


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """All samples at ``url`` as (name, labels, value)."""
    text = httpx.get(url, timeout=10).text
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _engine_name(name: str) -> str | None:
    return ENGINE_PREFIX.sub("", name) if ENGINE_PREFIX.match(name) else None


def engine_metrics(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, dict[str, float]]:
    """Per model: vLLM gauges, counters and histogram sums/counts, summed over replicas."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for name, labels, value in samples:
        short = _engine_name(name)
        if short is None or short.endswith("_bucket") or short.endswith("_created"):
            continue
        model = labels.get("model_name") or labels.get("WorkerId") or "?"
        out[model][short] += value
    return {m: dict(v) for m, v in out.items()}


def _hist_mean(m: dict[str, float], prefix: str) -> float | None:
    s, c = m.get(f"{prefix}_sum"), m.get(f"{prefix}_count")
    return s / c if s is not None and c else None


def sample(url: str, interval: float = 2.0) -> dict[str, Any]:
    """Two scrapes ``interval`` apart: cumulative means plus rates over the interval."""
    first = scrape(url)
    time.sleep(interval)
    second = scrape(url)
    a, b = engine_metrics(first), engine_metrics(second)
    models = {}
    for model, m in b.items():
        prev = a.get(model, {})

        def rate(key: str) -> float:
            return (m.get(key, 0.0) - prev.get(key, 0.0)) / interval

        models[model] = {
            "running": m.get("num_requests_running", 0.0),
            "waiting": m.get("num_requests_waiting", 0.0),
            "kv_cache_usage": m.get("kv_cache_usage_perc", m.get("gpu_cache_usage_perc", 0.0)),
            "requests_per_s": rate("e2e_request_latency_seconds_count"),
            "output_tokens_per_s": rate("generation_tokens_total"),
            "prompt_tokens_per_s": rate("prompt_tokens_total"),
            "mean_ttft_ms": 1000 * (_hist_mean(m, "time_to_first_token_seconds") or 0.0),
            "mean_tpot_ms": 1000 * (_hist_mean(m, "inter_token_latency_seconds")
                                    or _hist_mean(m, "time_per_output_token_seconds") or 0.0),
            "mean_e2e_ms": 1000 * (_hist_mean(m, "e2e_request_latency_seconds") or 0.0),
            "requests_total": m.get("e2e_request_latency_seconds_count", 0.0),
        }
    memory = defaultdict(float)
    for name, labels, value in second:
        if name == "ray_component_rss_mb":
            memory[labels.get("Component", "?")] += value
        elif name == "ray_node_gpus_utilization":
            memory["gpu_utilization"] += value
        elif name == "ray_node_gram_used":
            memory["gpu_memory_used_mb"] += value
    serve_queue = sum(v for n, _, v in second if n == "ray_serve_deployment_queued_queries")
    return {"models": models, "serve_queued": serve_queue,
            "rss_mb": dict(sorted(memory.items(), key=lambda kv: -kv[1])[:6])}


def render(stats: dict[str, Any]):
    table = Table(title=f"serving (Serve queue: {stats['serve_queued']:.0f})")
    cols = ["running", "waiting", "kv_cache_usage", "requests_per_s", "output_tokens_per_s",
            "mean_ttft_ms", "mean_tpot_ms", "mean_e2e_ms", "requests_total"]
    # Never truncate model ids: they are what people look for in this table.
    table.add_column("model", no_wrap=True, min_width=max([5, *map(len, stats["models"])]))
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right")
    for model, m in sorted(stats["models"].items()):
        table.add_row(model, *(f"{m[c]:.3g}" if c != "kv_cache_usage" else f"{100 * m[c]:.1f}%" for c in cols))
    if not stats["models"]:
        table.caption = "no vLLM engine metrics at this endpoint (no model deployed, or another node's endpoint)"
    else:
        table.caption = "process memory (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in stats["rss_mb"].items())
    return table
