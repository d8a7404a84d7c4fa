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
