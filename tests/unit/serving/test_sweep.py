"""Serve sweep: trial expansion and validation, SLO scoring, winner choice, tuned config write-back."""

import pytest

from app.config import ConfigError, load_config
from app.serving.config import ServeSweepConfig, ServingConfig
from app.serving.sweep import TrialResult, sweep_trials, changed_fields, pick_winner, score_point, slo_violations, tuned_serving


def point(c, tput, ttft=100.0, tpot=50.0, e2e=1000.0, failed=0):
    return {"concurrency": c, "output_throughput": tput, "request_throughput": tput / 64, "p50_ttft_ms": ttft,
            "p95_ttft_ms": ttft, "p95_tpot_ms": tpot, "p95_itl_ms": tpot, "p50_e2e_ms": e2e, "p95_e2e_ms": e2e,
            "completed": 8 - failed, "failed": failed}


SW = ServeSweepConfig(slo_p95_ttft_ms=2000, slo_p95_tpot_ms=150)


def test_slo_names_each_broken_limit():
    assert slo_violations(point(1, 10), SW) == []
    broken = slo_violations(point(8, 10, ttft=2500, tpot=151, failed=1), SW)
    assert broken == ["p95_ttft_ms 2500 > 2000", "p95_tpot_ms 151 > 150", "1 failed requests"]
    e2e = ServeSweepConfig(slo_p95_ttft_ms=None, slo_p95_tpot_ms=None, slo_p95_e2e_ms=500)
    assert slo_violations(point(1, 10, e2e=600), e2e) == ["p95_e2e_ms 600 > 500"]


def test_best_is_highest_throughput_among_levels_within_slo():
    t = TrialResult("a", ServingConfig(models=["m"]))
    t.points = [score_point(p, SW) for p in (point(1, 20), point(4, 60), point(16, 99, ttft=3000))]
    assert t.best["concurrency"] == 4 and t.score == 60  # 99 tok/s broke the TTFT SLO
    none = TrialResult("b", ServingConfig(models=["m"]))
    none.points = [score_point(point(1, 20, tpot=500), SW)]
    assert none.best is None and none.score == 0.0


def test_winner_is_best_under_slo_not_best_raw_throughput():
    fast_but_slow_latency = TrialResult("raw", ServingConfig(models=["m"]))
    fast_but_slow_latency.points = [score_point(point(1, 10), SW), score_point(point(32, 200, ttft=9000), SW)]
    steady = TrialResult("steady", ServingConfig(models=["m"]))
    steady.points = [score_point(point(1, 15), SW), score_point(point(8, 70), SW)]
    failed = TrialResult("broken", ServingConfig(models=["m"]), error="not ready")
    assert pick_winner([fast_but_slow_latency, steady, failed]).name == "steady"
    assert pick_winner([failed]) is None


def test_trials_expand_validate_and_deduplicate():
    cfg = load_config(None, ["serve_sweep.grid={max_num_seqs: [16, 32], enable_prefix_caching: [true, false]}"])
    names = [n for n, _ in sweep_trials(cfg)]
    # max_num_seqs=32 with prefix caching on is the current section itself: measured once.
    assert names == ["vllm-defaults", "current", "max_num_seqs=16,enable_prefix_caching=True",
                     "max_num_seqs=16,enable_prefix_caching=False", "max_num_seqs=32,enable_prefix_caching=False"]
    defaults = dict(sweep_trials(cfg))["vllm-defaults"]
    assert defaults.max_num_seqs is None and defaults.cpu_threads_bind == "auto"
    assert defaults.kv_cache_gib == cfg.serving.kv_cache_gib  # same memory budget: same work
    assert all(s.models == [cfg.model.name] for _, s in sweep_trials(cfg))


@pytest.mark.parametrize("override, words", [
    ("serve_sweep.grid={port: [1]}", "['port'] cannot be swept"),
    ("serve_sweep.trials=[{max_num_seqs: 0}]", "trial 'max_num_seqs=0': max_num_seqs"),
    ("serve_sweep.grid={max_num_seqs: []}", "list no values"),
    ("serve_sweep.concurrencies=[4, 1]", "rise strictly"),
    ("serve_sweep.model=other", "not in serving.models"),
    ("serve_sweep.trials=[{max_model_len: 4096}]", "exceeds model.max_seq_len"),
])
def test_bad_sweeps_are_named(override, words):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [override])
    assert words in str(err.value)


def test_no_slo_is_rejected():
    with pytest.raises(ConfigError, match="at least one latency SLO"):
        load_config(None, ["serve_sweep.slo_p95_ttft_ms=null", "serve_sweep.slo_p95_tpot_ms=null"])


def test_tuned_section_keeps_every_model_and_only_changes_tuned_fields():
    cfg = load_config(None, ["serving.models=[a, b]", "serve_sweep.trials=[{max_num_seqs: 64, cpu_threads_bind: '1'}]"])
    name, trial = sweep_trials(cfg)[-1]
    assert trial.models == ["a"]
    tuned = tuned_serving(cfg, TrialResult(name, trial))
    assert tuned.models == ["a", "b"] and tuned.max_num_seqs == 64
    # Tuned on one engine; pinning two engines to the same cores would slow both.
    assert tuned.cpu_threads_bind == "split"
    assert changed_fields(tuned, cfg.serving) == {"max_num_seqs": 64}


def test_rounds_average_per_level_and_keep_the_spread():
    from app.serving.sweep import combine_rounds

    def trial(*pts, error=""):
        t = TrialResult("a", ServingConfig(models=["m"]), error=error)
        t.points = [score_point(p | {"requests": 8}, SW) for p in pts]
        return t

    r1 = trial(point(1, 20, ttft=1000), point(4, 60, ttft=1800))
    r2 = trial(point(1, 30, ttft=1400), point(4, 40, ttft=2400))
    broken = trial(error="not ready")
    t = combine_rounds([r1, r2, broken], SW)
    assert [p["output_throughput"] for p in t.points] == [25, 50]
    assert t.points[1]["p95_ttft_ms"] == 2100 and not t.points[1]["slo_met"]  # averaged p95 breaks the SLO
    assert t.best["concurrency"] == 1 and t.points[0]["requests"] == 16 and t.points[0]["rounds"] == 2
    assert (t.points[1]["output_throughput_min"], t.points[1]["output_throughput_max"]) == (40, 60)
    assert t.error == "not ready"
    assert combine_rounds([broken], SW).best is None


def test_without_grid_only_the_named_trials_run():
    cfg = load_config(None, ["serve_sweep.include_current=false", "serve_sweep.trials=[{max_num_seqs: 8}]"])
    assert [n for n, _ in sweep_trials(cfg)] == ["vllm-defaults", "max_num_seqs=8"]


def test_a_trial_that_failed_the_gate_is_reported_failed_never_fast():
    from app.serving.sweep import trial_status

    s = ServingConfig()
    assert trial_status(TrialResult("a", s, error="correctness gate failed: m: 2/9 gate answers agree")) == \
        "failed the correctness gate"
    assert trial_status(TrialResult("b", s, error="models ['m'] not ready after 600 s")) == "failed to deploy"
    bad = TrialResult("c", s, error="correctness gate failed: ...")
    assert bad.score == 0 and bad.best is None and pick_winner([bad]) is None
