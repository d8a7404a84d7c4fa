"""Sticky assignment of a unit (a user or session id) to an experiment arm.

The hash is GrowthBook's version 2 (its SDKs' default for new experiments): FNV-1a 32-bit of the
experiment's seed plus the unit id, hashed again as a decimal string, taken modulo 10 000. It is
stable across processes, machines and languages (no ``PYTHONHASHSEED``), so every ingress replica
and every restart puts a unit in the same arm, and another SDK with the same seed agrees.

Arms own cumulative ranges of [0, 1) in their configured order. Changing the weights moves a range
boundary, so only the units between the old and the new boundary change arm (for two arms going
from 50/50 to 60/40: the 10% of units in [0.5, 0.6)); units outside every range's covered part
(``coverage`` < 1) are not in the experiment and get the baseline without being recorded as a unit
of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

FNV32_OFFSET = 0x811C9DC5
FNV32_PRIME = 0x01000193
BUCKETS = 10_000


def fnv1a32(text: str) -> int:
    """FNV-1a 32-bit hash of the UTF-8 bytes of ``text`` (the SDKs hash UTF-16 code units: the same for ASCII ids)."""
    h = FNV32_OFFSET
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * FNV32_PRIME) & 0xFFFFFFFF
    return h


def bucket(seed: str, unit: str) -> float:
    """The unit's position in [0, 1), in steps of 1/10 000 (GrowthBook hash version 2)."""
    return (fnv1a32(str(fnv1a32(seed + unit))) % BUCKETS) / BUCKETS


@dataclass(frozen=True)
class ArmRange:
    arm: str
    start: float
    end: float


def bucket_ranges(arms: Sequence[tuple[str, float]], coverage: float = 1.0) -> list[ArmRange]:
    """Cumulative ranges of [0, 1) for ``(arm, weight)`` pairs; weights are normalised to sum to 1.

    Each arm covers ``coverage`` of its share, starting at its share's start, so lowering the coverage
    leaves every included unit where it was.
    """
    if not arms:
        raise ValueError("an experiment needs at least one arm")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    weights = [float(w) for _, w in arms]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"arm weights must be >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    out, start = [], 0.0
    for (arm, _), w in zip(arms, weights):
        share = w / total
        out.append(ArmRange(arm, start, start + coverage * share))
        start += share
    return out


def choose(ranges: Sequence[ArmRange], n: float) -> str | None:
    """The arm whose range holds ``n``; None when ``n`` falls outside the covered part."""
    for r in ranges:
        if r.start <= n < r.end:
            return r.arm
    return None


def assign(seed: str, unit: str, ranges: Sequence[ArmRange]) -> str | None:
    return choose(ranges, bucket(seed, unit))


__all__ = ["fnv1a32", "bucket", "bucket_ranges", "choose", "assign", "ArmRange", "BUCKETS"]
