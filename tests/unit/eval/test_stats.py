import numpy as np
import pytest

from app.eval.stats import bootstrap_ci, holm, paired_comparison, sign_flip_p


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    rng = np.random.default_rng(1)
    values = rng.binomial(1, 0.7, size=200).astype(float)
    a = bootstrap_ci(values, samples=2000, seed=3)
    assert a == bootstrap_ci(values, samples=2000, seed=3)
    assert a.low < a.mean < a.high and a.n == 200
    # Normal approximation of a proportion's interval: p +- 1.96 sqrt(p(1-p)/n).
    half = 1.96 * np.sqrt(a.mean * (1 - a.mean) / 200)
    assert a.high - a.low == pytest.approx(2 * half, rel=0.15)


def test_bootstrap_edge_cases():
    assert bootstrap_ci([0.5]).as_dict() == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 1}
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_sign_flip_exact_p_by_hand():
    # Differences 1, 1, 1, -1: |sum| = 2. Of the 16 sign patterns, |sum| >= 2 for those with
    # 3 or 4 equal signs: 2 * (1 + 4) = 10, so p = 10/16.
    assert sign_flip_p(np.array([1.0, 1.0, 1.0, -1.0]), 100, np.random.default_rng(0)) == pytest.approx(10 / 16)
    # All four positive: only the all-plus and all-minus patterns reach 4: p = 2/16.
    assert sign_flip_p(np.ones(4), 100, np.random.default_rng(0)) == pytest.approx(2 / 16)
    assert sign_flip_p(np.zeros(5), 100, np.random.default_rng(0)) == 1.0


def test_paired_comparison_finds_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(7)
    a = rng.binomial(1, 0.3, size=150).astype(float)
    better = np.where(rng.random(150) < 0.5, 1.0, a)  # B fixes about half of A's misses
    cmp = paired_comparison(a, better, samples=2000)
    assert cmp.difference > 0.2 and cmp.low > 0 and cmp.p_bootstrap < 0.01 and cmp.p_permutation < 0.01
    assert cmp.wins_a == 0 and cmp.wins_b == int((better > a).sum())
    same = paired_comparison(a, rng.permutation(a), samples=2000)  # same accuracy, shuffled
    assert same.p_permutation > 0.05 and same.low < 0 < same.high
    with pytest.raises(ValueError, match="same examples"):
        paired_comparison([1, 0], [1])


def test_holm_by_hand():
    # Sorted 0.01, 0.02, 0.04 times 3, 2, 1: 0.03, 0.04, 0.04 (monotone), back in input order.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])


def test_detectable_difference_by_hand():
    import numpy as np

    from app.eval.stats import detectable_difference

    d = np.array([0.1, -0.1] * 50)  # SD 0.1005, n 100
    assert detectable_difference(d) == pytest.approx((1.959964 + 0.841621) * d.std(ddof=1) / 10, rel=1e-4)
    assert detectable_difference(np.array([0.3])) == float("inf")
