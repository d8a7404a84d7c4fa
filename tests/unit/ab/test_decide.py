import numpy as np
import pytest

from app.ab.config import AbConfig, DecisionConfig
from app.ab.decide import decide
from app.ab.stats import SequentialState, compare_latency, compare_rates, sequential_rates, srm_check

OK_SRM = srm_check({"base": 500, "ft": 500}, {"base": 0.5, "ft": 0.5})


def rates(sb, nb, sc, nc, sequential=True):
    c = compare_rates("thumbs_up", sb, nb, sc, nc)
    if sequential:
        c.sequential = sequential_rates(sb, nb, sc, nc, tau2=0.05**2, alpha=0.05, state=SequentialState())
    return c


def test_a_clear_improvement_wins():
    d = decide("base", "ft", rates(200, 500, 300, 500), OK_SRM, DecisionConfig(), planned_units=400)
    assert d.outcome == "winner" and d.winner == "ft" and "within the error and latency guardrails" in d.reasons[-1]


def test_a_worse_candidate_loses():
    d = decide("base", "ft", rates(300, 500, 200, 500), OK_SRM, DecisionConfig(), planned_units=400)
    assert d.outcome == "winner" and d.winner == "base"


def test_sample_ratio_mismatch_invalidates():
    srm = srm_check({"base": 600, "ft": 400}, {"base": 0.5, "ft": 0.5})
    d = decide("base", "ft", rates(200, 600, 300, 400), srm, DecisionConfig(), planned_units=400)
    assert d.outcome == "invalid" and d.winner is None and "sample-ratio mismatch" in d.reasons[0]


def test_too_few_units_keeps_running():
    d = decide("base", "ft", rates(2, 10, 9, 10), OK_SRM, DecisionConfig(min_units_per_arm=30), planned_units=400)
    assert d.outcome == "keep running" and "10 of the 30 units" in d.reasons[0]


def test_fixed_horizon_waits_for_the_planned_units_then_says_no_difference():
    cfg = DecisionConfig(sequential=False)
    early = decide("base", "ft", rates(40, 100, 60, 100, sequential=False), OK_SRM, cfg, planned_units=400)
    assert early.outcome == "keep running" and "peeking" in early.reasons[0]
    flat = decide("base", "ft", rates(200, 400, 204, 400, sequential=False), OK_SRM, cfg, planned_units=400)
    assert flat.outcome == "no difference" and "likely within" in flat.reasons[-1]


def test_guardrails_stop_a_candidate_that_is_better_but_broken():
    rng = np.random.default_rng(0)
    base_ms = rng.lognormal(6, 0.2, 400)
    slow = compare_latency("e2e_ms", base_ms, base_ms * 2.0)
    errors = compare_rates("error_rate", 5, 500, 60, 500)
    d = decide("base", "ft", rates(200, 500, 300, 500), OK_SRM, DecisionConfig(), 400, errors=errors, latency=slow)
    assert d.winner == "base" and "error rate" in d.reasons[-1] and "p95 latency" in d.reasons[-1]


def test_sequential_needs_its_result():
    with pytest.raises(ValueError, match="no sequential result"):
        decide("base", "ft", rates(200, 500, 300, 500, sequential=False), OK_SRM, DecisionConfig(), 400)


@pytest.mark.parametrize("arms, baseline, message", [
    ([{"name": "a", "model": "m", "weight": 1.0}], "a", "at least two arms"),
    ([{"name": "a", "model": "m", "weight": 0.5}, {"name": "a", "model": "n", "weight": 0.5}], "a", "unique"),
    ([{"name": "a", "model": "m", "weight": 0.5}, {"name": "b", "model": "n", "weight": 0.4}], "a", "sum to 1, they sum to 0.9"),
    ([{"name": "a", "model": "m", "weight": 0.5}, {"name": "b", "model": "n", "weight": 0.5}], "c", "ab.baseline 'c'"),
])
def test_bad_experiments_are_refused(arms, baseline, message):
    with pytest.raises(ValueError, match=message):
        AbConfig(arms=arms, baseline=baseline)


def test_default_experiment_is_valid():
    cfg = AbConfig()
    assert cfg.shadow_arm() == "finetuned" and cfg.arm("base").weight == 0.5
