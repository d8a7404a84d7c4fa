import pytest

from app.serving.loadgen import SLO, RequestResult, benchmark_prompts, percentile, summarize, tpot


def test_percentile_matches_numpy_linear():
    xs = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 95) == pytest.approx(8.8)
    assert percentile([], 99) == 0.0


def test_summary_uses_vllm_definitions():
    a = RequestResult(ok=True, ttft=0.1, e2e=1.1, itl=[0.1] * 10, output_tokens=11)
    b = RequestResult(ok=True, ttft=0.3, e2e=2.3, itl=[0.2] * 10, output_tokens=11)
    c = RequestResult(ok=False, error="HTTP 500")
    assert tpot(a) == pytest.approx(0.1) and tpot(b) == pytest.approx(0.2)
    s = summarize([a, b, c], wall_s=2.0, slo=SLO(ttft_s=0.2))
    assert s["completed"] == 2 and s["failed"] == 1
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["output_throughput"] == pytest.approx(11.0)
    assert s["mean_ttft_ms"] == pytest.approx(200.0)
    assert s["mean_tpot_ms"] == pytest.approx(150.0)
    assert s["p50_itl_ms"] == pytest.approx(150.0)
    assert s["goodput"] == pytest.approx(0.5) and s["slo_attainment"] == pytest.approx(1 / 3)


def test_prompts_are_deterministic_and_real():
    p = benchmark_prompts(8, seed=1)
    assert p == benchmark_prompts(8, seed=1) and len(set(p)) == 8
    assert all("Python documentation" in x and len(x) > 100 for x in p)
