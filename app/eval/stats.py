"""Statistics of evaluation results: bootstrap confidence intervals and paired model comparisons.

Every model is scored on the same examples, so comparisons are paired: the per-example
differences carry the comparison, and resampling examples (not models) gives both the interval
of the mean difference and its p-value. Plain numpy with a seeded generator, so a report is
reproducible to the digit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """B minus A over the same examples."""

    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    p_bootstrap: float
    p_permutation: float
    n: int
    wins_b: int  # examples where B scored higher
    wins_a: int
    detectable: float  # smallest true mean difference found 80% of the time at this n (two-sided 5%)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _values(values: Sequence[float] | np.ndarray, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{what} contain NaN ({int(np.isnan(arr).sum())} of {arr.size})")
    return arr


def _boot_means(values: np.ndarray, samples: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """Means of ``samples`` resamples (with replacement) of ``values``, in chunks to bound memory."""
    n = values.size
    out = np.empty(samples)
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        out[start:start + k] = values[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return out


def bootstrap_ci(values: Sequence[float] | np.ndarray, samples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> Interval:
    """Mean with a percentile bootstrap interval.

    One value gives a zero-width interval; no values is an error (there is nothing to report).
    """
    arr = _values(values)
    if arr.size == 0:
        raise ValueError("no values to summarize")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    mean = float(arr.mean())
    if arr.size == 1:
        return Interval(mean, mean, mean, 1)
    means = _boot_means(arr, samples, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(mean, float(low), float(high), int(arr.size))


def paired_comparison(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, samples: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> PairedComparison:
    """B against A on the same examples: mean difference, its bootstrap interval and two p-values.

    * p_bootstrap: two-sided, from the bootstrap distribution of the mean difference shifted to the
      null (difference 0): the share of resampled differences at least as far from 0 as observed.
    * p_permutation: two-sided sign-flip permutation test (under the null each example's two scores
      are exchangeable, so each difference's sign is a coin flip); exact over all 2^k sign patterns
      of the k non-zero differences when k <= 16, else ``samples`` random patterns (add-one smoothed).
    """
    x, y = _values(a, "scores of A"), _values(b, "scores of B")
    if x.size != y.size:
        raise ValueError(f"paired comparison needs the same examples: {x.size} scores for A, {y.size} for B")
    if x.size == 0:
        raise ValueError("no examples to compare")
    d = y - x
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    if x.size == 1:
        low = high = observed
        p_boot = 1.0
    else:
        means = _boot_means(d, samples, rng)
        tail = (1 - confidence) / 2
        low, high = (float(v) for v in np.quantile(means, [tail, 1 - tail]))
        centred = means - observed
        p_boot = float(min(1.0, (np.sum(np.abs(centred) >= abs(observed) - 1e-12) + 1) / (samples + 1)))
    p_perm = sign_flip_p(d, samples, rng)
    return PairedComparison(float(x.mean()), float(y.mean()), observed, low, high, p_boot, p_perm, int(x.size),
                            int((d > 0).sum()), int((d < 0).sum()), detectable_difference(d))


def detectable_difference(d: np.ndarray, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable mean difference of a paired test at this n: (z_{1-alpha/2} + z_power) x SD of
    the paired differences / sqrt(n) (normal approximation; the observed SD stands in for the true one)."""
    if d.size < 2:
        return float("inf")
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return float(z * d.std(ddof=1) / np.sqrt(d.size))


def sign_flip_p(d: np.ndarray, samples: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of a mean difference under random sign flips of the paired differences."""
    nz = d[d != 0]
    if nz.size == 0:
        return 1.0
    observed = abs(nz.sum())
    if nz.size <= 16:
        patterns = ((np.arange(2 ** nz.size)[:, None] >> np.arange(nz.size)) & 1) * 2 - 1
        sums = np.abs(patterns @ nz)
        return float(np.mean(sums >= observed - 1e-12))
    hits = 0
    for start in range(0, samples, 256):
        k = min(256, samples - start)
        signs = rng.choice([-1.0, 1.0], size=(k, nz.size))
        hits += int(np.sum(np.abs(signs @ nz) >= observed - 1e-12))
    return (hits + 1) / (samples + 1)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over several comparisons), input order kept."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted.tolist()
