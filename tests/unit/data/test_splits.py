"""Grouped, stratified splits and the leakage check (with planted leaks that must be caught)."""

import numpy as np

from app.data.splits import assign_splits, check_leakage, near_duplicate_links

FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def pairs(n_docs=60, per_doc=5, topics=("a", "b", "c")):
    return [{"pair_id": f"d{d}-p{k}", "doc_id": f"d{d}", "chunk_id": f"d{d}-c{k % 2}", "topic": topics[d % len(topics)],
             "question": f"What is item {k} of document {d}?"} for d in range(n_docs) for k in range(per_doc)]


def split_lists(ps, assignment):
    return {s: [p for p in ps if assignment[p["pair_id"]] == s] for s in ("train", "validation", "test")}


def test_groups_stay_whole_and_every_topic_is_in_every_split():
    ps = pairs()
    a = assign_splits(ps, FRACTIONS, "document", seed=1)
    for doc in {p["doc_id"] for p in ps}:
        assert len({a[p["pair_id"]] for p in ps if p["doc_id"] == doc}) == 1
    splits = split_lists(ps, a)
    for s, members in splits.items():
        assert {p["topic"] for p in members} == {"a", "b", "c"}, s
    assert abs(len(splits["train"]) / len(ps) - 0.8) < 0.05
    assert check_leakage(splits, "document") == []
    assert a == assign_splits(ps, FRACTIONS, "document", seed=1)  # reproducible


def test_chunk_grouping_and_near_duplicate_links_merge_groups():
    ps = pairs(n_docs=20)
    links = [("d0-p0", "d19-p4")]
    a = assign_splits(ps, FRACTIONS, "chunk", seed=3, links=links)
    assert a["d0-p0"] == a["d19-p4"]
    for chunk in {p["chunk_id"] for p in ps}:
        assert len({a[p["pair_id"]] for p in ps if p["chunk_id"] == chunk}) == 1


def test_planted_leaks_are_caught():
    ps = pairs(n_docs=30)
    splits = split_lists(ps, assign_splits(ps, FRACTIONS, "document", seed=0))
    assert check_leakage(splits, "document") == []
    victim = splits["train"][0]
    # A copy of a training question under another document and chunk, planted in test.
    planted = {**victim, "pair_id": "planted", "doc_id": "elsewhere", "chunk_id": "elsewhere-c0"}
    leaks = check_leakage({**splits, "test": splits["test"] + [planted]}, "document")
    assert [leak["kind"] for leak in leaks] == ["identical question"]
    # The same chunk in two splits.
    moved = {**splits["test"][0], "pair_id": "moved", "question": "Something else entirely?",
             "chunk_id": victim["chunk_id"], "doc_id": victim["doc_id"]}
    kinds = {leak["kind"] for leak in check_leakage({**splits, "test": splits["test"] + [moved]}, "document")}
    assert kinds == {"shared chunk", "shared document"}


def test_near_duplicate_questions_across_splits_are_caught():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    twin = v[0] + 0.05 * rng.normal(size=16).astype(np.float32)
    twin /= np.linalg.norm(twin)
    emb = {"x": v[0], "y": v[1], "z": v[2], "t": twin}
    mk = lambda pid, doc: {"pair_id": pid, "doc_id": doc, "chunk_id": doc + "-c", "question": pid + "?"}  # noqa: E731
    splits = {"train": [mk("x", "1"), mk("y", "2")], "validation": [mk("z", "3")], "test": [mk("t", "4")]}
    leaks = check_leakage(splits, "document", emb, near_duplicate=0.95)
    assert len(leaks) == 1 and leaks[0]["kind"] == "near-duplicate question" and {leaks[0]["pair_id"], leaks[0]["other"]} == {"x", "t"}
    assert near_duplicate_links(["x", "y", "z", "t"], np.stack([v[0], v[1], v[2], twin]), 0.95) == [("x", "t")]


def test_many_small_topics_still_fill_validation_and_test():
    # 10 topics of 2 documents each: a per-topic deal would give every document to train.
    ps = pairs(n_docs=20, topics=tuple("abcdefghij"))
    splits = split_lists(ps, assign_splits(ps, FRACTIONS, "document", seed=0))
    assert len(splits["validation"]) >= 5 and len(splits["test"]) >= 5
    assert check_leakage(splits, "document") == []
