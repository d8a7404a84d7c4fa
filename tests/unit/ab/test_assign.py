from collections import Counter

import pytest

from app.ab.assign import assign, bucket, bucket_ranges, choose, fnv1a32


def test_fnv1a32_matches_the_published_test_vectors():
    # From the FNV reference (draft-eastlake-fnv): the offset basis for "", then "a" and "foobar".
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


def test_bucket_is_growthbooks_hash_v2():
    # hash v2 = fnv1a32(str(fnv1a32(seed + value))) % 10000 / 10000, written out independently here.
    inner = fnv1a32("exp-1" + "user-42")
    assert bucket("exp-1", "user-42") == (fnv1a32(str(inner)) % 10000) / 10000
    assert 0 <= bucket("", "") < 1


def test_assignment_is_sticky_and_follows_the_weights():
    ranges = bucket_ranges([("base", 0.5), ("ft", 0.5)])
    units = [f"user-{i}" for i in range(20_000)]
    first = [assign("exp", u, ranges) for u in units]
    assert first == [assign("exp", u, ranges) for u in units]  # the same unit, the same arm, every time
    share = Counter(first)["ft"] / len(units)
    assert share == pytest.approx(0.5, abs=0.015)
    # Another experiment's seed shuffles the units independently of this one.
    other = [assign("exp-2", u, ranges) for u in units]
    agree = sum(a == b for a, b in zip(first, other)) / len(units)
    assert agree == pytest.approx(0.5, abs=0.02)


def test_a_weight_change_moves_only_the_units_between_the_boundaries():
    units = [f"u{i}" for i in range(20_000)]
    old = bucket_ranges([("base", 50), ("ft", 50)])
    new = bucket_ranges([("base", 60), ("ft", 40)])
    moved = sum(assign("s", u, old) != assign("s", u, new) for u in units) / len(units)
    assert moved == pytest.approx(0.10, abs=0.01)  # the minimum any split can move
    assert all(assign("s", u, new) == "base" for u in units if assign("s", u, old) == "base")


def test_coverage_leaves_units_out_without_moving_the_others():
    full = bucket_ranges([("a", 1), ("b", 1)])
    half = bucket_ranges([("a", 1), ("b", 1)], coverage=0.5)
    assert half[0].start == 0 and half[0].end == 0.25 and half[1].start == 0.5 and half[1].end == 0.75
    assert choose(half, 0.3) is None and choose(full, 0.3) == "a"
    for n in (0.0, 0.1, 0.24, 0.5, 0.6, 0.74):
        assert choose(half, n) == choose(full, n)


@pytest.mark.parametrize("arms, coverage, message", [
    ([], 1.0, "at least one arm"),
    ([("a", 1)], 0.0, "coverage"),
    ([("a", -1), ("b", 2)], 1.0, "weights"),
    ([("a", 0), ("b", 0)], 1.0, "weights"),
])
def test_bad_ranges_are_refused(arms, coverage, message):
    with pytest.raises(ValueError, match=message):
        bucket_ranges(arms, coverage)
