"""Deterministic sampling shared by the stages (validation samples in training, test-set limits in
evaluation, human-evaluation items). Imports nothing from the app."""

from __future__ import annotations

import random
from typing import Any


def stratified_sample(records: list[dict[str, Any]], n: int, seed: int, key: str = "topic") -> list[dict[str, Any]]:
    """Up to ``n`` records dealt round-robin across ``key`` values in a seeded order (deterministic)."""
    if n >= len(records):
        return list(records)
    rng = random.Random(seed)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(str(r.get(key, "")), []).append(r)
    queues = []
    for k in sorted(groups):
        g = list(groups[k])
        rng.shuffle(g)
        queues.append(g)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
        queues = [q for q in queues if q]
    return out
