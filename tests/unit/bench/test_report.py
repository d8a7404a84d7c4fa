"""The report's rules fire on the figures that should trigger them, and say why, with those figures."""

from __future__ import annotations

import json

import pytest

from app.bench.report import _plots, collect, markdown, recommendations, targets, to_html
from app.config import ExperimentConfig


def point(c, tput, ttft95, kv=None):
    p = {"concurrency": c, "output_throughput": tput, "request_throughput": tput / 64, "goodput": tput / 64,
         "p50_ttft_ms": ttft95 / 2, "p90_ttft_ms": ttft95 * 0.9, "p95_ttft_ms": ttft95, "p99_ttft_ms": ttft95 * 1.1,
         "p95_tpot_ms": 50.0, "p50_e2e_ms": 1000.0, "p95_e2e_ms": ttft95 + 3000, "peak_rss_mib": 4000.0}
    if kv is not None:
        p["max_kv_cache_usage"] = kv
    return p


def ratios(tput, ci):
    base = {"ratio": 1.0, "ci95": [0.95, 1.05], "min": 0.97, "max": 1.03, "rounds": 4, "beyond_noise": False}
    out = {k: dict(base, higher_is_better=k.endswith("throughput")) for k in
           ("output_throughput", "request_throughput", "mean_ttft_ms", "p95_ttft_ms", "mean_tpot_ms", "p95_tpot_ms",
            "mean_e2e_ms", "p95_e2e_ms")}
    out["output_throughput"] = {"ratio": tput, "ci95": ci, "min": ci[0], "max": ci[1], "rounds": 4,
                                "beyond_noise": not ci[0] <= 1 <= ci[1], "higher_is_better": True}
    return out


@pytest.fixture
def data():
    stress = {"figures": {"requests": 40, "completed": 40, "failed": 0, "p95_e2e_ms": 9000.0, "p50_ttft_ms": 800.0,
                          "p95_ttft_ms": 2500.0}, "after": {"answers": True, "same_answer": True, "error": ""},
              "failures": [], "loadgen_cpu_percent_mean": 40.0, "peak_rss_mib": 4100.0, "source": "s/summary.json",
              "samples": [{"t_s": t, "rss_mib_total": 4000.0} for t in range(0, 30, 2)]}
    soak = {"figures": {"requests": 100, "completed": 100, "failed": 0}, "after": {"same_answer": True},
            "failures": [], "loadgen_cpu_percent_mean": 10.0, "peak_rss_mib": 4000.0, "source": "k/summary.json",
            "memory": {"verdict": "leak", "slope_mib_per_hour": 500.0, "ci95_mib_per_hour": [300.0, 700.0],
                       "threshold_mib_per_hour": 64.0, "span_s": 600.0,
                       "by_role": {"engines": 480.0, "proxy": 1.0, "ingress": None}}, "samples": []}
    return {"loads": {"stress": stress, "soak": soak},
            "sweep": {"points": [point(1, 30, 400, 0.05), point(2, 55, 900, 0.1), point(4, 80, 2600, 0.15),
                                 point(8, 82, 6000, 0.2)], "saturated_at": 8, "source": "w/points.json"},
            "compare": {"pairs": [{"name": "ft-vs-base", "baseline": "b", "candidate": "f",
                                   "ratios": ratios(0.8, [0.7, 0.9])},
                                  {"name": "ab-endpoint-vs-direct", "baseline": "b", "candidate": "assistant",
                                   "ratios": ratios(0.99, [0.95, 1.03])}], "source": "c/compare.json"}}


def test_each_rule_fires_with_its_figures(data):
    cfg = ExperimentConfig()
    recs = {r["rule"]: r for r in recommendations(data, cfg)}
    assert "past concurrency 4" in recs["saturation"]["finding"] and "80.0 tok/s" in recs["saturation"]["finding"]
    # p95 TTFT breaks the 2000 ms SLO at c=4 while the KV cache is 15% used: the batch is capped.
    assert "concurrency 4" in recs["slo-vs-kv"]["finding"] and "15%" in recs["slo-vs-kv"]["finding"]
    assert "max_num_seqs" in recs["slo-vs-kv"]["action"]
    assert "40% of a core" in recs["loadgen-cpu"]["finding"]
    assert "no request failed" in recs["stress"]["finding"] and "answered the same" in recs["stress"]["finding"]
    assert recs["soak"]["finding"].startswith("leak: resident memory slope +500 MiB/h")
    assert "most of it in the engines (+480 MiB/h)" in recs["soak"]["finding"] and "KV cache" in recs["soak"]["action"]
    assert "output_throughput x0.80" in recs["comparison"]["finding"]
    assert "within the noise" in recs["ab-overhead"]["finding"]


def test_a_full_kv_cache_is_a_memory_limit(data):
    data["sweep"]["points"][2]["max_kv_cache_usage"] = 0.97
    recs = {r["rule"]: r for r in recommendations(data, ExperimentConfig())}
    assert "97% full" in recs["slo-vs-kv"]["finding"] and "kv_cache_gib" in recs["slo-vs-kv"]["action"]


def test_targets_and_the_written_report(data, tmp_path):
    checks = {c["target"].split(":")[0]: c for c in targets(data)}
    assert checks["the service answers correctly after a stress run"]["met"]
    assert not checks["no memory leak under a soak"]["met"]
    assert not checks["ft-vs-base"]["met"] and "output_throughput" in checks["ft-vs-base"]["figure"]
    assert not checks["ab-endpoint-vs-direct"]["met"]  # no worse, but not better either
    plots = _plots(data, tmp_path)
    assert set(plots) == {"latency_throughput.png", "ttft_percentiles.png", "memory.png"}
    md = markdown(data, recommendations(data, ExperimentConfig()), targets(data), plots, None)
    assert "**not met**" in md and "app bench load --profile stress" in md and "w/points.json" in md
    page = to_html(md, plots, tmp_path)
    assert page.count("data:image/png;base64,") == 3


def test_collect_takes_the_newest_run_per_kind_and_says_when_there_is_none(tmp_path):
    from app.bench.load import BenchError

    cfg = ExperimentConfig(bench={"out_dir": str(tmp_path)})
    with pytest.raises(BenchError, match="no benchmark results"):
        collect(cfg)
    for stamp, tput in (("20260101-000000", 1.0), ("20260102-000000", 2.0)):
        d = tmp_path / "sweep" / stamp
        d.mkdir(parents=True)
        (d / "points.json").write_text(json.dumps({"points": [point(1, tput, 10)]}))
    assert collect(cfg)["sweep"]["points"][0]["output_throughput"] == 2.0


def suite_row(suite, comparison, figure, base, cand, hib, spread=None, beyond=None, ratio=None):
    from app.bench.suites import _row

    return _row(suite, comparison, figure, base, cand, hib, spread=spread, beyond_noise=beyond, ratio=ratio)


@pytest.fixture
def suites():
    ok = {"status": "ok", "seconds": 60.0}
    return {"source": "x/suites.json", "suites": {
        "quality": ok | {"command": "app rerun abc", "how": "reused", "evaluation": "eval-1", "note": "style",
                         "rows": [suite_row("quality", "ft-vs-base (n=236)", "domain_correct (difference)", 0.50, 0.74,
                                            True, [0.17, 0.31], True)]},
        "tuned_vs_default": ok | {"command": "app serve sweep -c t/config.yaml", "rows": [
            suite_row("tuned_vs_default", "serving section vs vLLM's defaults (m)", "best output tok/s under the SLO",
                      261.8, 302.4, True, [1.10, 1.22], True)]},
        "serve_vs_vllm": ok | {"command": "python benchmarks/serve_vs_vllm.py -c s/config.yaml", "rows": [
            suite_row("serve_vs_vllm", "Ray Serve vs plain vLLM (m), c=4", "output tok/s", 80.0, 81.6, True),
            suite_row("serve_vs_vllm", "Ray Serve vs plain vLLM (m), c=16", "output tok/s", 236.8, 192.1, True)]},
        "vllm_vs_hf": {"status": "failed", "reason": "vllm_vs_hf.py: exit 1; last lines: boom", "rows": [],
                       "seconds": 3.0},
        "int4_vs_bf16": ok | {"command": "DOMAIN_LLM_HOME=h python benchmarks/quant_serving.py --models a b",
                              "rows": [suite_row("int4_vs_bf16", "b vs a", "checkpoint MiB", 257.0, 109.0, False,
                                                 beyond=True),
                                       suite_row("int4_vs_bf16", "b vs a", "c=8 output tok/s", 76.7, 62.2, True,
                                                 [0.7, 0.9], True)]}}}


def test_the_suites_rows_become_targets_recommendations_and_a_section(data, suites, tmp_path):
    data["suites"] = suites
    recs = {r["rule"]: r for r in recommendations(data, ExperimentConfig())}
    assert "x0.81" in recs["serve-overhead"]["finding"] and "stream_batching_interval_ms" in recs["serve-overhead"]["action"]
    assert "x1.16" in recs["tuned-serving"]["finding"] and "+30% goal is not reached" in recs["tuned-serving"]["action"]
    assert "checkpoint x0.42" in recs["int4-serving"]["finding"] and "serve bf16" in recs["int4-serving"]["action"]
    assert "0.500 -> 0.740" in recs["quality"]["finding"] and "per origin" in recs["quality"]["action"]
    assert "exit 1" in recs["suite vllm_vs_hf"]["finding"]
    checks = {c["target"]: c for c in targets(data)}
    tuned = checks["tuned serving: +30% best throughput under the SLO over vLLM's defaults, beyond noise"]
    assert not tuned["met"] and "x1.155" in tuned["figure"]
    assert not checks["Ray Serve within 10% of the plain vLLM server's throughput"]["met"]
    assert checks["b vs a: checkpoint >= 40% smaller"]["met"]
    md = markdown(data, list(recs.values()), targets(data), [], None)
    for command in ("app rerun abc", "app serve sweep -c t/config.yaml", "benchmarks/quant_serving.py --models a b"):
        assert command in md
    assert "### vllm_vs_hf: failed" in md and "Not measured: vllm_vs_hf.py: exit 1" in md


def test_quality_rows_read_the_evaluations_paired_differences():
    from app.bench.suites import quality_rows

    def comp(a, b, lo, hi):
        return {"mean_a": a, "mean_b": b, "difference": b - a, "low": lo, "high": hi, "p_permutation": 0.01, "n": 10}

    summary = {"examples": 20, "reference": "base", "comparisons": {"ft": {
        "domain_correct": comp(0.5, 0.7, 0.05, 0.35), "token_f1": comp(0.2, 0.21, -0.02, 0.04)}},
        "comparisons_by_origin": {"human": {"ft": {"domain_correct": comp(0.4, 0.42, -0.1, 0.14)}}}}
    rows = {(r["comparison"], r["figure"]): r for r in quality_rows(summary, "base", "ft")}
    dc = rows[("ft-vs-base (n=20)", "domain_correct (difference)")]
    assert dc["beyond_noise"] and dc["spread"] == [0.05, 0.35] and dc["ratio"] == pytest.approx(1.4)
    assert not rows[("ft-vs-base (n=20)", "token_f1 (difference)")]["beyond_noise"]
    assert not rows[("ft-vs-base, origin human", "domain_correct (difference)")]["beyond_noise"]
