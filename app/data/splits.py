"""Leak-free splits: stratified by topic, grouped by source document (or chunk), then checked.

Every pair of a group (all pairs of one document, or of one chunk) lands in the same split, so a
model is never tested on a passage it was trained on. Groups are dealt out in a seeded random
order to whichever split is furthest below its target share, counted overall and within the
group's topic, so the splits have about the configured sizes and each topic is spread over them
as far as its number of groups allows.

:func:`check_leakage` then looks for what grouping alone would miss (the same chunk or document in
two splits, identical or near-identical questions in two splits) and the build fails if it finds any.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any, Iterator

import numpy as np

from app.datasets import normalize_text
from app.errors import AppError

SPLITS = ("train", "validation", "test")


class LeakageError(AppError, RuntimeError):
    """The splits share chunks, documents or near-identical questions; the message lists them."""


def close_pairs(a: np.ndarray, b: np.ndarray, threshold: float, block: int = 1024) -> Iterator[tuple[int, int, float]]:
    """(row of a, row of b, cosine) for every pair of unit vectors with cosine >= threshold, computed
    in blocks of rows so memory stays bounded."""
    for start in range(0, len(a), block):
        sims = a[start:start + block] @ b.T
        for i, j in zip(*np.nonzero(sims >= threshold)):
            yield start + int(i), int(j), float(sims[i, j])


def near_duplicate_links(ids: list[str], vectors: np.ndarray, threshold: float) -> list[tuple[str, str]]:
    """Pairs of ids whose (unit) question embeddings have cosine >= threshold."""
    return [(ids[i], ids[j]) for i, j, _ in close_pairs(vectors, vectors, threshold) if i < j]


def assign_splits(pairs: list[dict[str, Any]], fractions: dict[str, float], group_by: str, seed: int,
                  links: list[tuple[str, str]] = ()) -> dict[str, str]:
    """pair_id -> split name. ``group_by``: "document" (doc_id) or "chunk" (chunk_id).

    ``links`` (near-duplicate questions) merge the groups they connect, so the two questions end up
    in the same split however far apart their sources are.
    """
    key = "doc_id" if group_by == "document" else "chunk_id"
    parent: dict[str, str] = {p[key]: p[key] for p in pairs}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    group_of = {p["pair_id"]: p[key] for p in pairs}
    for a, b in links:
        if a in group_of and b in group_of:
            ra, rb = root(group_of[a]), root(group_of[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in pairs:
        groups[root(p[key])].append(p)
    topic_of = {g: Counter(m["topic"] for m in members).most_common(1)[0][0] for g, members in groups.items()}
    sizes = {g: len(members) for g, members in groups.items()}
    deal = _deal(sorted(groups), sizes, topic_of, fractions, random.Random(seed), tries=64)
    return {m["pair_id"]: deal[g] for g, members in groups.items() for m in members}


def _deal(names: list[str], sizes: dict[str, int], topic_of: dict[str, str], fractions: dict[str, float],
          rng: random.Random, tries: int) -> dict[str, str]:
    """Groups -> splits, close to the target shares overall and within each topic.

    Each try walks the topics round-robin, each topic's groups in a random order, and gives every
    group to the split furthest below its target (relative shortfall), counted both overall and
    within the group's topic; the try with the smallest squared error (overall + per topic) wins. So a
    topic of one or two documents still feeds the small splits when they need it, and random orders
    keep big and small documents in every split (sorting by size would leave test only small ones).
    """
    total = sum(sizes.values())
    by_topic: dict[str, list[str]] = defaultdict(list)
    for g in names:
        by_topic[topic_of[g]].append(g)
    topic_total = {t: sum(sizes[g] for g in gs) for t, gs in by_topic.items()}
    best, best_err = {}, float("inf")
    for _ in range(tries):
        queues = {t: rng.sample(gs, len(gs)) for t, gs in sorted(by_topic.items())}
        order = []
        while queues:
            for t in list(queues):
                order.append(queues[t].pop())
                if not queues[t]:
                    del queues[t]
        filled = dict.fromkeys(SPLITS, 0)
        topic_filled = {t: dict.fromkeys(SPLITS, 0) for t in by_topic}
        deal = {}
        for g in order:
            t = topic_of[g]
            # Shortfall as a share of each target, so the small splits are not starved while the
            # big one catches up; a random jitter breaks ties.
            split = max(SPLITS, key=lambda s: 1 - filled[s] / (fractions[s] * total)
                        + 1 - topic_filled[t][s] / (fractions[s] * topic_total[t]) + 1e-6 * rng.random())
            filled[split] += sizes[g]
            topic_filled[t][split] += sizes[g]
            deal[g] = split
        err = sum((filled[s] - fractions[s] * total) ** 2 for s in SPLITS) + sum(
            (topic_filled[t][s] - fractions[s] * topic_total[t]) ** 2 for t in by_topic for s in SPLITS)
        if err < best_err:
            best, best_err = deal, err
    return best


def check_leakage(splits: dict[str, list[dict[str, Any]]], group_by: str,
                  embeddings: dict[str, np.ndarray] | None = None, near_duplicate: float = 0.92) -> list[dict[str, Any]]:
    """Every cross-split overlap: shared chunk, shared document (when grouped by document), identical
    normalized question, or questions with embedding cosine >= ``near_duplicate``. Empty: no leak."""
    leaks: list[dict[str, Any]] = []
    names = [s for s in SPLITS if s in splits] + sorted(set(splits) - set(SPLITS))
    fields = [("chunk_id", "shared chunk")] + ([("doc_id", "shared document")] if group_by == "document" else [])
    for field, kind in fields:
        owner: dict[str, str] = {}
        for split in names:
            for p in splits[split]:
                first = owner.setdefault(p[field], split)
                if first != split:
                    leaks.append({"kind": kind, "value": p[field], "splits": [first, split], "pair_id": p["pair_id"]})
    seen: dict[str, tuple[str, str]] = {}
    for split in names:
        for p in splits[split]:
            q = normalize_text(p["question"])
            if q in seen and seen[q][0] != split:
                leaks.append({"kind": "identical question", "value": p["question"], "splits": [seen[q][0], split],
                              "pair_id": p["pair_id"], "other": seen[q][1]})
            seen.setdefault(q, (split, p["pair_id"]))
    if embeddings:
        for a_i, a in enumerate(names):
            for b in names[a_i + 1:]:
                ids_a = [p["pair_id"] for p in splits[a] if p["pair_id"] in embeddings]
                ids_b = [p["pair_id"] for p in splits[b] if p["pair_id"] in embeddings]
                if not ids_a or not ids_b:
                    continue
                va = np.stack([embeddings[i] for i in ids_a])
                vb = np.stack([embeddings[i] for i in ids_b])
                for i, j, sim in close_pairs(va, vb, near_duplicate):
                    leaks.append({"kind": "near-duplicate question", "value": f"cosine {sim:.3f}",
                                  "splits": [a, b], "pair_id": ids_a[i], "other": ids_b[j]})
    return leaks


def leakage_message(leaks: list[dict[str, Any]], limit: int = 10) -> str:
    kinds = Counter(leak["kind"] for leak in leaks)
    lines = [f"{len(leaks)} cross-split overlaps: " + ", ".join(f"{n} {k}" for k, n in kinds.items())]
    lines += [f"  {leak['kind']}: {leak['value']!s:.80} in {' and '.join(leak['splits'])} (pair {leak['pair_id']})"
              for leak in leaks[:limit]]
    return "\n".join(lines)
