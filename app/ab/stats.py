"""The statistics of an A/B test, as plain functions of per-arm samples (no Ray, no database).

Candidate minus baseline everywhere: a positive difference means the candidate's value is higher.

- rates (thumbs up, domain correct, errors): two-proportion z-test, Newcombe interval for the
  absolute difference and a log-adjusted interval for the ratio (statsmodels);
- scores (ratings 1-5, similarities): Welch's t-test and its interval (scipy), the relative lift's
  interval by the delta method;
- latencies: Mann-Whitney U (scipy) and bootstrap intervals of the median and p95 differences;
- sample-ratio mismatch: chi-squared goodness of fit of the arms' unit counts against their weights;
- Holm's correction across metrics (statsmodels);
- power: units per arm needed for a minimum detectable effect (statsmodels), shown before a test starts;
- always-valid inference for people who look early: the mixture sequential probability ratio test
  (mSPRT, Johari et al. 2017, normal mixture of variance tau^2 over the effect) on the difference's
  normal approximation, with its confidence sequence. No maintained library implements it, so the
  closed form is here and tests/unit/ab/test_stats.py checks its error rate under peeking by simulation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

SRM_ALARM_P = 0.001  # the usual threshold: an SRM this unlikely means the assignment or the logging is broken


@dataclass
class Comparison:
    """One metric, candidate vs baseline."""

    metric: str
    kind: str  # "rate", "mean" or "latency"
    baseline: float  # the baseline arm's rate, mean or median
    candidate: float
    n_baseline: int
    n_candidate: int
    difference: float  # candidate - baseline (medians for latency)
    ci: tuple[float, float]
    relative: float | None  # candidate / baseline - 1
    relative_ci: tuple[float, float] | None
    p_value: float
    test: str
    p_adjusted: float | None = None  # after Holm across the metrics of one report
    sequential: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def _array(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise ValueError(f"{what}: expected a flat list of finite numbers")
    return arr


def compare_rates(metric: str, successes_b: int, n_b: int, successes_c: int, n_c: int,
                  confidence: float = 0.95) -> Comparison:
    """Two-proportion z-test (pooled), Newcombe interval of the difference, log-adjusted interval of the ratio."""
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    for s, n, arm in ((successes_b, n_b, "baseline"), (successes_c, n_c, "candidate")):
        if n <= 0 or not 0 <= s <= n:
            raise ValueError(f"{metric}: {arm} has {s} successes of {n}; need 0 <= successes <= n and n > 0")
    pb, pc = successes_b / n_b, successes_c / n_c
    if successes_b + successes_c in (0, n_b + n_c):  # no variation at all: nothing to test
        p = 1.0
    else:
        _, p = proportions_ztest([successes_c, successes_b], [n_c, n_b])
    alpha = 1 - confidence
    low, high = confint_proportions_2indep(successes_c, n_c, successes_b, n_b, compare="diff", method="newcomb",
                                           alpha=alpha)
    rel = rel_ci = None
    if successes_b > 0:
        rel = pc / pb - 1
        if successes_c > 0:
            rl, rh = confint_proportions_2indep(successes_c, n_c, successes_b, n_b, compare="ratio",
                                                method="log-adjusted", alpha=alpha)
            rel_ci = (float(rl) - 1, float(rh) - 1)
    return Comparison(metric, "rate", pb, pc, n_b, n_c, pc - pb, (float(low), float(high)), rel, rel_ci, float(p),
                      "two-proportion z-test")


def compare_means(metric: str, baseline: Sequence[float], candidate: Sequence[float],
                  confidence: float = 0.95) -> Comparison:
    """Welch's t-test with its interval for the difference of means; the relative lift by the delta method."""
    from scipy.stats import ttest_ind

    b, c = _array(baseline, f"{metric} (baseline)"), _array(candidate, f"{metric} (candidate)")
    if len(b) < 2 or len(c) < 2:
        raise ValueError(f"{metric}: Welch's test needs at least 2 values per arm (got {len(b)} and {len(c)})")
    mb, mc = float(b.mean()), float(c.mean())
    vb, vc = float(b.var(ddof=1)) / len(b), float(c.var(ddof=1)) / len(c)
    if vb + vc == 0:
        p, ci = (1.0 if mb == mc else 0.0), (mc - mb, mc - mb)
    else:
        res = ttest_ind(c, b, equal_var=False)
        ci_obj = res.confidence_interval(confidence)
        p, ci = float(res.pvalue), (float(ci_obj.low), float(ci_obj.high))
    rel = rel_ci = None
    if mb != 0:
        rel = mc / mb - 1
        se = math.sqrt(vc / mb**2 + (mc**2) * vb / mb**4)
        z = _z(confidence)
        rel_ci = (rel - z * se, rel + z * se)
    return Comparison(metric, "mean", mb, mc, len(b), len(c), mc - mb, ci, rel, rel_ci, p, "Welch's t-test")


def compare_latency(metric: str, baseline: Sequence[float], candidate: Sequence[float], confidence: float = 0.95,
                    samples: int = 2000, seed: int = 0) -> Comparison:
    """Mann-Whitney U for a shift; bootstrap percentile intervals of the median and p95 differences."""
    from scipy.stats import mannwhitneyu

    b, c = _array(baseline, f"{metric} (baseline)"), _array(candidate, f"{metric} (candidate)")
    if len(b) < 2 or len(c) < 2:
        raise ValueError(f"{metric}: needs at least 2 latencies per arm (got {len(b)} and {len(c)})")
    p = 1.0 if np.array_equal(np.unique(b), np.unique(c)) and len(np.unique(b)) == 1 else \
        float(mannwhitneyu(c, b, alternative="two-sided").pvalue)
    rng = np.random.default_rng(seed)
    bi = rng.integers(0, len(b), size=(samples, len(b)))
    ci_ = rng.integers(0, len(c), size=(samples, len(c)))
    med = np.median(c[ci_], axis=1) - np.median(b[bi], axis=1)
    p95 = np.percentile(c[ci_], 95, axis=1) - np.percentile(b[bi], 95, axis=1)
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    mb, mc = float(np.median(b)), float(np.median(c))
    rel = mc / mb - 1 if mb else None
    return Comparison(metric, "latency", mb, mc, len(b), len(c), mc - mb,
                      (float(np.percentile(med, lo)), float(np.percentile(med, hi))), rel, None, p, "Mann-Whitney U",
                      extra={"p95_baseline": float(np.percentile(b, 95)), "p95_candidate": float(np.percentile(c, 95)),
                             "p95_difference": float(np.percentile(c, 95) - np.percentile(b, 95)),
                             "p95_difference_ci": (float(np.percentile(p95, lo)), float(np.percentile(p95, hi)))})


def holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Holm-adjusted p-values across ``comparisons`` (set in place, and returned)."""
    from statsmodels.stats.multitest import multipletests

    if comparisons:
        adjusted = multipletests([c.p_value for c in comparisons], method="holm")[1]
        for c, p in zip(comparisons, adjusted):
            c.p_adjusted = float(p)
    return list(comparisons)


def srm_check(counts: dict[str, int], weights: dict[str, float]) -> dict[str, Any]:
    """Chi-squared goodness of fit of the units per arm against the configured weights."""
    from scipy.stats import chisquare

    arms = list(weights)
    observed = np.array([counts.get(a, 0) for a in arms], dtype=float)
    total = observed.sum()
    w = np.array([weights[a] for a in arms], dtype=float)
    if total == 0 or len(arms) < 2:
        return {"p_value": 1.0, "alarm": False, "observed": dict(zip(arms, observed.astype(int).tolist())),
                "expected": {a: 0.0 for a in arms}}
    expected = total * w / w.sum()
    p = float(chisquare(observed, expected).pvalue)
    return {"p_value": p, "alarm": p < SRM_ALARM_P, "observed": dict(zip(arms, observed.astype(int).tolist())),
            "expected": dict(zip(arms, expected.round(1).tolist()))}


def units_for_rate(baseline_rate: float, mde_relative: float, alpha: float = 0.05, power: float = 0.8,
                   ratio: float = 1.0) -> int:
    """Units in the baseline arm to detect a relative change ``mde_relative`` of a rate (two-sided);
    the candidate arm needs ``ratio`` times as many."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    if not 0 < baseline_rate < 1:
        raise ValueError(f"the baseline rate must be in (0, 1), got {baseline_rate}")
    target = baseline_rate * (1 + mde_relative)
    if not 0 < target < 1 or mde_relative == 0:
        raise ValueError(f"a relative change of {mde_relative} from {baseline_rate} leaves (0, 1) or is zero")
    effect = abs(proportion_effectsize(target, baseline_rate))
    n = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=ratio, alternative="two-sided")
    return int(math.ceil(n))


def units_for_mean(sd: float, mde: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0) -> int:
    """Units in the baseline arm to detect an absolute change ``mde`` of a mean with standard deviation ``sd``."""
    from statsmodels.stats.power import NormalIndPower

    if sd <= 0 or mde == 0:
        raise ValueError(f"need sd > 0 and a non-zero effect (got sd={sd}, mde={mde})")
    n = NormalIndPower().solve_power(effect_size=abs(mde) / sd, alpha=alpha, power=power, ratio=ratio,
                                     alternative="two-sided")
    return int(math.ceil(n))


# -- always-valid inference ---------------------------------------------------------------------


def msprt_lambda(difference: float, variance: float, tau2: float, theta0: float = 0.0) -> float:
    """The mixture likelihood ratio of H1 (effect ~ N(theta0, tau2)) to H0 (effect = theta0), for an
    estimate ``difference`` with sampling variance ``variance``:
    sqrt(V / (V + tau2)) * exp(tau2 * (d - theta0)^2 / (2 V (V + tau2)))."""
    if variance <= 0 or tau2 <= 0:
        raise ValueError(f"need variance > 0 and tau2 > 0 (got {variance}, {tau2})")
    v = variance
    exponent = tau2 * (difference - theta0) ** 2 / (2 * v * (v + tau2))
    return math.sqrt(v / (v + tau2)) * math.exp(min(exponent, 700.0))


def confidence_sequence(difference: float, variance: float, tau2: float, alpha: float = 0.05) -> tuple[float, float]:
    """Every effect theta the mSPRT has not rejected at level alpha: valid at every look at once."""
    v = variance
    half = math.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((v + tau2) / v)))
    return difference - half, difference + half


@dataclass
class SequentialState:
    """Running state of the always-valid p-value: min over looks of 1 / Lambda (never increases)."""

    p_value: float = 1.0
    looks: int = 0

    def update(self, difference: float, variance: float, tau2: float) -> float:
        self.looks += 1
        if variance > 0:
            self.p_value = min(self.p_value, 1.0 / max(msprt_lambda(difference, variance, tau2), 1e-300))
        return self.p_value


def rate_variance(successes_b: int, n_b: int, successes_c: int, n_c: int) -> tuple[float, float]:
    """(difference, sampling variance) of the rate difference, unpooled."""
    pb, pc = successes_b / n_b, successes_c / n_c
    return pc - pb, pb * (1 - pb) / n_b + pc * (1 - pc) / n_c


def sequential_rates(successes_b: int, n_b: int, successes_c: int, n_c: int, tau2: float, alpha: float,
                     state: SequentialState | None = None) -> dict[str, Any]:
    """One look of the sequential test on a rate; pass the same ``state`` at every look."""
    state = state or SequentialState()
    d, v = rate_variance(successes_b, n_b, successes_c, n_c)
    p = state.update(d, v, tau2) if v > 0 else state.p_value
    cs = confidence_sequence(d, v, tau2, alpha) if v > 0 else (d, d)
    return {"p_value": p, "confidence_sequence": cs, "looks": state.looks, "tau2": tau2}


def aa_pooled_p(successes_b: np.ndarray, successes_c: np.ndarray, n: int) -> np.ndarray:
    """compare_rates' two-sided pooled z-test p-value for equal arms of ``n``, vectorised."""
    from scipy.stats import norm

    pool = (successes_b + successes_c) / (2 * n)
    se = np.sqrt(np.clip(pool * (1 - pool) * 2 / n, 1e-300, None))
    return 2 * norm.sf(np.abs(successes_c - successes_b) / n / se)


def aa_false_positive_rates(rate: float, looks: int, per_look: int, tau2: float, alpha: float = 0.05,
                            reps: int = 2000, seed: int = 0, burn_in: int = 0) -> dict[str, Any]:
    """Simulated A/A experiments (both arms at ``rate``, ``per_look`` new units per arm between looks):
    how often each way of reading them declares a difference at ``alpha``. The fixed-horizon test read
    once at the end, the same test read at every look (stopping at the first p < alpha: peeking), and
    the always-valid sequential test read at every look from the first with ``burn_in`` units per arm
    (as the report runs it)."""
    rng = np.random.default_rng(seed)
    a = rng.binomial(per_look, rate, size=(reps, looks)).cumsum(axis=1)
    b = rng.binomial(per_look, rate, size=(reps, looks)).cumsum(axis=1)
    p = np.stack([aa_pooled_p(a[:, k], b[:, k], per_look * (k + 1)) for k in range(looks)], axis=1)
    hits = 0
    for r in range(reps):
        state = SequentialState()
        for k in range(looks):
            if per_look * (k + 1) < burn_in:
                continue
            d, v = rate_variance(int(a[r, k]), per_look * (k + 1), int(b[r, k]), per_look * (k + 1))
            if v > 0 and state.update(d, v, tau2) < alpha:
                hits += 1
                break
    return {"experiments": reps, "looks": looks, "units_per_arm_per_look": per_look, "rate": rate, "alpha": alpha,
            "burn_in_units": burn_in,
            "fixed_read_once": float((p[:, -1] < alpha).mean()), "fixed_read_every_look": float((p < alpha).any(
                axis=1).mean()), "sequential_read_every_look": hits / reps}


# -- unit-level (ratio) metrics -----------------------------------------------------------------


def ratio_estimate(units: Sequence[tuple[float, float]]) -> tuple[float, float, int]:
    """(mean, sampling variance, units) of a metric summed per unit: sum(values) / sum(counts) over the
    units, each ``(sum of the unit's values, the unit's count)``. The variance is the delta method's
    (Deng et al. 2018): units are what was randomized, and one unit's observations are not independent."""
    arr = np.asarray([(float(s), float(n)) for s, n in units if n > 0], dtype=float).reshape(-1, 2)
    k = len(arr)
    if k == 0:
        return float("nan"), float("nan"), 0
    s, n = arr[:, 0], arr[:, 1]
    mean = s.sum() / n.sum()
    if k < 2:
        return float(mean), float("nan"), k
    resid = s - mean * n
    var = float((resid ** 2).sum() / (k - 1) / (k * n.mean() ** 2))
    return float(mean), var, k


def compare_ratio(metric: str, units_b: Sequence[tuple[float, float]], units_c: Sequence[tuple[float, float]],
                  confidence: float = 0.95, tau2: float | None = None, state: SequentialState | None = None) -> Comparison:
    """Candidate vs baseline on a per-unit ratio metric (:func:`ratio_estimate`): z-test on the difference,
    its interval, the relative lift's interval (delta method) and, with ``tau2``, one look of the mSPRT."""
    from scipy.stats import norm

    mb, vb, kb = ratio_estimate(units_b)
    mc, vc, kc = ratio_estimate(units_c)
    d, v = mc - mb, vb + vc
    z = _z(confidence)
    if kb < 2 or kc < 2 or not v > 0:
        p, ci = 1.0, (float("nan"), float("nan"))
    else:
        p = float(2 * norm.sf(abs(d) / math.sqrt(v)))
        ci = (d - z * math.sqrt(v), d + z * math.sqrt(v))
    rel = rel_ci = None
    if mb > 0 and v > 0:
        rel = mc / mb - 1
        sd = math.sqrt(vc / mb ** 2 + mc ** 2 * vb / mb ** 4)
        rel_ci = (rel - z * sd, rel + z * sd)
    seq = None
    if tau2 is not None:
        state = state or SequentialState()
        p_seq = state.update(d, v, tau2) if v > 0 else state.p_value
        cs = confidence_sequence(d, v, tau2, 1 - confidence) if v > 0 else (float("nan"), float("nan"))
        seq = {"p_value": p_seq, "confidence_sequence": cs, "looks": state.looks, "tau2": tau2}
    return Comparison(metric, "ratio", mb, mc, kb, kc, d, ci, rel, rel_ci, p, "z-test, delta-method variance over units",
                      sequential=seq)


__all__ = ["ratio_estimate", "compare_ratio", "Comparison", "compare_rates", "compare_means", "compare_latency", "holm", "srm_check", "units_for_rate",
           "units_for_mean", "msprt_lambda", "confidence_sequence", "SequentialState", "sequential_rates",
           "rate_variance", "SRM_ALARM_P"]
