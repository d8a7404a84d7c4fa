"""The leak verdict (a slope with its interval), the deployment's process roles, the bench config's rules."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from app.bench.config import BenchConfig, LoadConfig
from app.bench.monitor import deployment_memory, memory_slope, role_of


def series(slope_mib_per_h: float, noise_mib: float, minutes: float = 10, every_s: float = 2, seed: int = 0):
    rng = random.Random(seed)
    n = int(minutes * 60 / every_s)
    return [{"t_s": i * every_s, "rss_mib_total": 3000 + slope_mib_per_h * i * every_s / 3600 + rng.gauss(0, noise_mib)}
            for i in range(n)]


def test_a_steady_rise_is_a_leak_and_flat_memory_is_not():
    leak = memory_slope(series(600, 5), threshold_mib_per_h=64)
    assert leak["verdict"] == "leak" and leak["slope_mib_per_hour"] == pytest.approx(600, rel=0.1)
    lo, hi = leak["ci95_mib_per_hour"]
    assert lo < 600 < hi
    flat = memory_slope(series(0, 5), threshold_mib_per_h=64)
    assert flat["verdict"] == "no leak" and flat["ci95_mib_per_hour"][1] < 64


def test_too_short_or_too_noisy_is_undecided_not_no_leak():
    assert memory_slope(series(0, 200, minutes=0.5), threshold_mib_per_h=64)["verdict"] == "undecided"
    assert memory_slope(series(0, 5)[:2], threshold_mib_per_h=64)["verdict"] == "undecided"


def test_the_warm_up_is_skipped():
    rows = series(0, 1)
    for r in rows[:30]:  # the first minute: engines still allocating
        r["rss_mib_total"] -= 500 * (30 - rows.index(r)) / 30
    assert memory_slope(rows, 64)["verdict"] == "leak"
    assert memory_slope(rows, 64, skip_s=60)["verdict"] == "no leak"


def test_roles_of_serve_and_vllm_processes():
    assert role_of("ray::ServeReplica:llm:OpenAiIngress") == "ingress"
    assert role_of("ray::ServeReplica:llm:LLMServer:smollm2-135m-instruct") == "replicas"
    assert role_of("VLLM::EngineCore") == "engines" and role_of("ray::ProxyActor") == "proxy"
    assert role_of("/usr/bin/python") is None
    assert deployment_memory()["total"] >= 0


def test_profile_lengths():
    assert LoadConfig(profile="step", step_max_users=8, step_users=3, step_seconds=10).duration_s() == 30
    assert LoadConfig(profile="stress", stress_users=20).peak_users() == 20
    assert LoadConfig(profile="soak", soak_seconds=120).duration_s() == 120
    assert LoadConfig(profile="stress", seconds=45).duration_s() == 45


def test_a_remote_url_needs_allow_remote_and_a_url_must_be_one():
    with pytest.raises(ValidationError, match="not on this machine.*allow_remote"):
        BenchConfig(url="http://10.1.2.3:8000")
    assert BenchConfig(url="http://10.1.2.3:8000", allow_remote=True).url
    assert BenchConfig(url="http://127.0.0.1:9000").url
    with pytest.raises(ValidationError, match="not an http"):
        BenchConfig(url="ftp://127.0.0.1")
    with pytest.raises(ValidationError, match="must rise strictly"):
        BenchConfig(sweep={"concurrencies": [4, 2]})


def test_ratio_summary_is_a_geometric_mean_with_a_log_scale_interval():
    from app.bench.compare import ratio_summary

    same = ratio_summary([0.98, 1.03, 1.0, 0.99])
    assert same["ratio"] == pytest.approx(1.0, abs=0.01) and not same["beyond_noise"]
    assert same["ci95"][0] < 1 < same["ci95"][1] and same["min"] == 0.98 and same["max"] == 1.03
    faster = ratio_summary([1.5, 1.6, 1.55, 1.45])
    assert faster["beyond_noise"] and faster["ci95"][0] > 1.3
    # Reciprocal ratios give reciprocal results: the geometric mean is symmetric, the arithmetic one is not.
    assert ratio_summary([2.0, 0.5])["ratio"] == pytest.approx(1.0)
    assert ratio_summary([1.2])["rounds"] == 1 and "ci95" not in ratio_summary([1.2])


def test_the_sampler_samples_a_process_trees_cpu_until_stopped():
    import subprocess
    import sys
    import time

    from app.bench.monitor import Sampler

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a load generator using one core
    try:
        sampler = Sampler(0.2, pid=busy.pid, metrics_url="http://127.0.0.1:9/metrics")  # nothing listens on 9
        sampler.start()
        time.sleep(2.0)
        samples = sampler.stop()
    finally:
        busy.kill()
        busy.wait()
    assert len(samples) >= 3 and not sampler.is_alive()
    assert max(s.get("loadgen_cpu_percent", 0) for s in samples) > 40
    assert all("rss_mib_total" in s and "kv_cache_usage" not in s for s in samples)


def test_peaks_of_a_runs_samples():
    from app.bench.monitor import peaks

    samples = [{"t_s": 0, "rss_mib_total": 100.0, "kv_cache_usage": 0.1}, {"t_s": 1, "rss_mib_total": 130.0},
               {"t_s": 2, "rss_mib_total": 120.0, "kv_cache_usage": 0.4, "requests_waiting": 3.0}]
    assert peaks(samples) == {"peak_rss_mib": 130.0, "max_kv_cache_usage": 0.4, "max_requests_waiting": 3.0}
    assert peaks([]) == {"peak_rss_mib": 0.0}
