"""The A/B statistics against closed forms and, for error rates, against simulation."""

import math

import numpy as np
import pytest

from app.ab.stats import (SequentialState, aa_false_positive_rates, aa_pooled_p, compare_latency, compare_means,
                          compare_rates, confidence_sequence, holm, msprt_lambda, rate_variance, srm_check,
                          units_for_mean, units_for_rate)


def test_rates_match_the_textbook_z_test():
    c = compare_rates("thumbs_up", 40, 100, 55, 100)
    p = (40 + 55) / 200
    z = (0.55 - 0.40) / math.sqrt(p * (1 - p) * (1 / 100 + 1 / 100))
    assert c.p_value == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2)))), rel=1e-6)
    assert c.ci[0] < 0.15 < c.ci[1] and c.ci[0] > 0  # significant at 5%: the interval excludes 0
    assert c.relative == pytest.approx(0.375) and c.relative_ci[0] < 0.375 < c.relative_ci[1]


def test_rates_without_variation_or_with_bad_counts():
    assert compare_rates("x", 0, 10, 0, 10).p_value == 1.0
    with pytest.raises(ValueError, match="baseline has 11 successes of 10"):
        compare_rates("x", 11, 10, 1, 10)
    with pytest.raises(ValueError, match="candidate has 1 successes of 0"):
        compare_rates("x", 1, 10, 1, 0)


def test_welch_interval_and_relative_lift():
    rng = np.random.default_rng(1)
    b, c = rng.normal(3.0, 1.0, 400), rng.normal(3.3, 1.5, 300)
    r = compare_means("rating", b, c)
    assert r.test == "Welch's t-test" and r.p_value < 0.01
    se = math.sqrt(b.var(ddof=1) / len(b) + c.var(ddof=1) / len(c))
    assert r.ci[1] - r.ci[0] == pytest.approx(2 * 1.96 * se, rel=0.02)
    assert r.relative_ci[0] < r.relative < r.relative_ci[1]
    with pytest.raises(ValueError, match="at least 2 values"):
        compare_means("rating", [1.0], [2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        compare_means("rating", [1.0, float("nan")], [2.0, 3.0])


def test_latency_shift_is_found_and_its_interval_covers_it():
    rng = np.random.default_rng(2)
    b = rng.lognormal(0, 0.3, 300)
    r = compare_latency("e2e_ms", b, b * 1.2)
    assert r.p_value < 1e-3
    true = np.median(b) * 0.2
    assert r.ci[0] < true < r.ci[1] and r.extra["p95_difference"] > 0


def test_holm_adjusts_in_order():
    cs = [compare_rates(f"m{i}", 50, 100, s, 100) for i, s in enumerate((70, 58, 52))]
    holm(cs)
    ps = sorted(c.p_value for c in cs)
    adj = sorted(c.p_adjusted for c in cs)
    assert adj[0] == pytest.approx(3 * ps[0]) and all(a >= p for a, p in zip(adj, ps))


def test_srm_alarm_only_for_a_real_mismatch():
    assert not srm_check({"a": 5050, "b": 4950}, {"a": 1, "b": 1})["alarm"]
    assert srm_check({"a": 5300, "b": 4700}, {"a": 1, "b": 1})["alarm"]
    assert not srm_check({"a": 8000, "b": 2000}, {"a": 0.8, "b": 0.2})["alarm"]


def test_power_matches_the_normal_approximation():
    # Per arm, two equal arms: n = 2 ((z_a/2 + z_b) / effect)^2, with Cohen's h as the effect for rates
    # (Cohen's tables: h = d = 0.2 at alpha 0.05 and power 0.8 needs 392-393 per group).
    h = 2 * math.asin(math.sqrt(0.55)) - 2 * math.asin(math.sqrt(0.5))
    assert units_for_rate(0.5, 0.10) == math.ceil(2 * ((1.959964 + 0.841621) / h) ** 2)
    assert units_for_mean(1.0, 0.2) == 393
    with pytest.raises(ValueError, match="leaves"):
        units_for_rate(0.9, 0.5)


def test_msprt_closed_form_and_confidence_sequence_agree():
    d, v, tau2 = 0.08, 0.001, 0.01
    low, high = confidence_sequence(d, v, tau2, 0.05)
    # At the interval's edges the likelihood ratio of theta0 = edge is exactly 1/alpha.
    assert msprt_lambda(d, v, tau2, theta0=low) == pytest.approx(20, rel=1e-6)
    assert msprt_lambda(d, v, tau2, theta0=high) == pytest.approx(20, rel=1e-6)
    assert low < d < high


def test_aa_false_positive_rates_fixed_peeking_and_sequential():
    """A/A tests, simulated: a fixed-horizon test looked at once is wrong about 5% of the time; the same
    test looked at after every batch and stopped at the first p < 0.05 is wrong far more often; the
    sequential test under the same peeking stays at or below 5%. The A/B report runs the same
    simulation with each experiment's own looks, to show why it reads the sequential p-value."""
    reps, looks, per_look, rate = 4000, 20, 50, 0.3
    rng = np.random.default_rng(3)
    a = rng.binomial(per_look, rate, size=(3, looks)).cumsum(axis=1)
    b = rng.binomial(per_look, rate, size=(3, looks)).cumsum(axis=1)
    for r, k in ((0, 0), (1, 7), (2, looks - 1)):  # the vectorised test is compare_rates' test
        n = per_look * (k + 1)
        assert aa_pooled_p(a[r, k], b[r, k], n) == pytest.approx(
            compare_rates("x", int(a[r, k]), n, int(b[r, k]), n).p_value, rel=1e-9)
    rates = aa_false_positive_rates(rate, looks, per_look, tau2=0.06 ** 2, reps=reps, seed=3)
    print(f"\nA/A false positives over {reps} experiments: fixed {rates['fixed_read_once']:.3f}, fixed with {looks} "
          f"looks {rates['fixed_read_every_look']:.3f}, sequential with {looks} looks "
          f"{rates['sequential_read_every_look']:.3f}")
    assert 0.035 <= rates["fixed_read_once"] <= 0.065
    assert rates["fixed_read_every_look"] > 0.15
    assert rates["sequential_read_every_look"] <= 0.06


def test_sequential_test_still_finds_a_real_effect():
    rng = np.random.default_rng(4)
    found = 0
    for _ in range(200):
        state = SequentialState()
        sa = sb = n = 0
        for _ in range(40):
            sa += rng.binomial(50, 0.30)
            sb += rng.binomial(50, 0.45)
            n += 50
            d, v = rate_variance(sa, n, sb, n)
            if state.update(d, v, (0.15) ** 2) < 0.05:
                found += 1
                break
    assert found / 200 > 0.9
