"""What a load run costs the machine: resident memory of the deployment over time (a leak is a slope,
judged with its interval) and the CPU the load generator itself uses (on 2 cores it competes with
the server)."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import psutil

# Process titles of a Serve deployment on this machine: the replicas (the ingress and each model's
# LLMServer), the proxy, the controller, and the vLLM engine processes they start.
ROLES = (("ray::ServeReplica:llm:OpenAiIngress", "ingress"), ("ray::ServeReplica:llm:ExperimentIngress", "ingress"),
         ("ray::ServeReplica", "replicas"), ("ray::ProxyActor", "proxy"), ("ray::ServeController", "controller"),
         ("VLLM::", "engines"))
MIB = 2**20


def role_of(title: str) -> str | None:
    for prefix, role in ROLES:
        if title.startswith(prefix):
            return role
    return None


def deployment_memory() -> dict[str, float]:
    """Resident memory (MiB) of every process of the Serve deployment on this machine, per role and in all."""
    out: dict[str, float] = {"total": 0.0}
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        try:
            title = (p.info["cmdline"] or [""])[0]
            role = role_of(title)
            if role is None or p.info["memory_info"] is None:
                continue
            mib = p.info["memory_info"].rss / MIB
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            continue
        out[role] = out.get(role, 0.0) + mib
        out["total"] += mib
    return out


def engine_state(metrics_url: str) -> dict[str, float]:
    """KV-cache use (the fullest engine's), requests running and waiting (all engines), from a Ray node's
    Prometheus endpoint; nothing when it does not answer."""
    from app.serving.monitor import engine_metrics, scrape

    try:
        engines = engine_metrics(scrape(metrics_url))
    except Exception:  # noqa: BLE001 - a missing metrics endpoint costs the figure, not the run
        return {}
    if not engines:
        return {}
    return {"kv_cache_usage": max(m.get("kv_cache_usage_perc", m.get("gpu_cache_usage_perc", 0.0))
                                  for m in engines.values()),
            "requests_running": sum(m.get("num_requests_running", 0.0) for m in engines.values()),
            "requests_waiting": sum(m.get("num_requests_waiting", 0.0) for m in engines.values())}


class Sampler(threading.Thread):
    """Samples the deployment's memory and one process tree's CPU every ``every_s`` until stopped."""

    def __init__(self, every_s: float, pid: int | None = None, metrics_url: str | None = None) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.every_s = every_s
        self.pid = pid
        self.metrics_url = metrics_url
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()
        self._cpu_prev: tuple[float, float] | None = None

    def _tree_cpu_seconds(self) -> float | None:
        if self.pid is None:
            return None
        try:
            root = psutil.Process(self.pid)
            total = 0.0
            for p in [root, *root.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    continue
            return total
        except psutil.NoSuchProcess:
            return None

    def sample(self, t0: float) -> dict[str, Any]:
        now = time.perf_counter()
        row: dict[str, Any] = {"t_s": now - t0, **{f"rss_mib_{k}": v for k, v in deployment_memory().items()}}
        cpu = self._tree_cpu_seconds()
        if cpu is not None:
            if self._cpu_prev is not None and now > self._cpu_prev[0]:
                row["loadgen_cpu_percent"] = 100 * (cpu - self._cpu_prev[1]) / (now - self._cpu_prev[0])
            self._cpu_prev = (now, cpu)
        row["system_cpu_percent"] = psutil.cpu_percent(interval=None) * psutil.cpu_count()
        if self.metrics_url:
            row.update(engine_state(self.metrics_url))
        return row

    def run(self) -> None:
        t0 = time.perf_counter()
        psutil.cpu_percent(interval=None)
        while not self._halt.is_set():
            self.samples.append(self.sample(t0))
            self._halt.wait(self.every_s)

    def stop(self) -> list[dict[str, Any]]:
        self._halt.set()
        self.join(timeout=30)
        return self.samples


def memory_slope(samples: list[dict[str, Any]], threshold_mib_per_h: float, key: str = "rss_mib_total",
                 skip_s: float = 0.0) -> dict[str, Any]:
    """Least-squares slope of ``key`` over time (MiB per hour) with its 95% interval, and the verdict:
    'leak' when the interval's lower bound is above the threshold, 'no leak' when its upper bound is
    below it, else 'undecided' (too short or too noisy to tell)."""
    from scipy import stats

    pts = [(s["t_s"], s[key]) for s in samples if key in s and s["t_s"] >= skip_s]
    if len(pts) < 3:
        return {"verdict": "undecided", "reason": f"{len(pts)} memory samples (need >= 3)", "samples": len(pts),
                "threshold_mib_per_hour": threshold_mib_per_h}
    xs = [t / 3600 for t, _ in pts]
    ys = [v for _, v in pts]
    if max(xs) - min(xs) <= 0:
        return {"verdict": "undecided", "reason": "no time span", "samples": len(pts),
                "threshold_mib_per_hour": threshold_mib_per_h}
    fit = stats.linregress(xs, ys)
    tcrit = stats.t.ppf(0.975, len(pts) - 2)
    lo, hi = fit.slope - tcrit * fit.stderr, fit.slope + tcrit * fit.stderr
    if not math.isfinite(lo):
        lo, hi = fit.slope, fit.slope
    verdict = "leak" if lo > threshold_mib_per_h else "no leak" if hi < threshold_mib_per_h else "undecided"
    return {"verdict": verdict, "slope_mib_per_hour": fit.slope, "ci95_mib_per_hour": [lo, hi],
            "threshold_mib_per_hour": threshold_mib_per_h, "samples": len(pts), "span_s": (max(xs) - min(xs)) * 3600,
            "start_mib": ys[0], "end_mib": ys[-1], "peak_mib": max(ys)}


def peaks(samples: list[dict[str, Any]]) -> dict[str, float]:
    """The deployment's peak resident memory, and the highest KV-cache use and engine queue (when the
    metrics were read), over a run's samples."""
    out = {"peak_rss_mib": max((s.get("rss_mib_total", 0.0) for s in samples), default=0.0)}
    for key in ("kv_cache_usage", "requests_waiting", "requests_running"):
        values = [s[key] for s in samples if key in s]
        if values:
            out[f"max_{key}"] = max(values)
    return out
