"""The experiment's report from a real SQLite database: unit-level statistics, SRM, the decision over time,
the Markdown and the dashboard page."""

from __future__ import annotations

import random

import pytest

from app.ab.assign import assign, bucket_ranges
from app.ab.config import AbConfig
from app.ab.dashboard import render
from app.ab.report import analyse, markdown
from app.ab.stats import compare_rates, compare_ratio, ratio_estimate
from app.ab.store import EventWriter, ExperimentStore


def ab_config(**decision) -> AbConfig:
    return AbConfig.model_validate({"experiment": "exp", "decision": {"mde_relative": 0.5, "min_units_per_arm": 20,
                                                                      **decision}})


def fill(tmp_path, rates: dict[str, float], users: int, per_user: int = 2, seed: int = 0,
         drop: dict[str, float] | None = None) -> ExperimentStore:
    """Simulated traffic: each user assigned by the real hash, each answer liked with its arm's rate;
    ``drop`` loses a share of an arm's events (a broken logger), for the SRM check."""
    cfg = ab_config()
    url = f"sqlite:///{tmp_path / 'ab.db'}"
    writer = EventWriter(url, tmp_path / "spool", interval_s=0.02)
    rng = random.Random(seed)
    ranges = bucket_ranges([(a.name, a.weight) for a in cfg.arms])
    feedback = []
    for u in range(users):
        unit = f"user-{u}"
        arm = assign(cfg.experiment, unit, ranges)
        if drop and rng.random() < drop.get(arm, 0):
            continue
        for k in range(per_user):
            rid = f"{u}-{k}"
            writer.record({"id": rid, "experiment": "exp", "unit": unit, "arm": arm, "model": cfg.arm(arm).model,
                           "role": "served", "status": "ok", "question": f"q{k}", "answer": "a",
                           "e2e_ms": 100 + rng.random() * 20, "ttft_ms": 10.0})
            feedback.append((rid, unit, rng.random() < rates[arm]))
    assert writer.flush(30)
    writer.close()
    store = ExperimentStore(url)
    store.record_split("exp", {"base": 0.5, "finetuned": 0.5}, "start")
    for rid, unit, up in feedback:
        store.add_feedback(rid, unit, thumbs_up=up)
    return store


def test_ratio_estimate_is_the_usual_rate_with_one_observation_per_unit():
    rng = random.Random(1)
    b = [(float(rng.random() < 0.3), 1.0) for _ in range(400)]
    c = [(float(rng.random() < 0.4), 1.0) for _ in range(400)]
    ratio = compare_ratio("t", b, c)
    plain = compare_rates("t", int(sum(s for s, _ in b)), 400, int(sum(s for s, _ in c)), 400)
    assert ratio.difference == pytest.approx(plain.difference)
    assert ratio.p_value == pytest.approx(plain.p_value, rel=0.1)


def test_ratio_variance_counts_units_not_requests():
    """Ten identical answers from one user are one unit's worth of evidence, not ten."""
    rng = random.Random(2)
    per_unit = [(10.0 * (rng.random() < 0.5), 10.0) for _ in range(100)]
    _, var_units, k = ratio_estimate(per_unit)
    flat = [(s / 10, 1.0) for s, _ in per_unit for _ in range(10)]
    _, var_flat, _ = ratio_estimate(flat)
    assert k == 100 and var_units == pytest.approx(10 * var_flat, rel=0.05)


def test_a_real_difference_gives_the_candidate_the_win(tmp_path):
    store = fill(tmp_path, {"base": 0.3, "finetuned": 0.65}, users=300)
    report = analyse(store, ab_config())
    d = report["decisions"]["finetuned"]
    assert d["outcome"] == "winner" and d["winner"] == "finetuned", d
    assert not report["srm"]["alarm"]
    primary = report["comparisons"]["finetuned"][0]
    assert primary["metric"] == "thumbs_up" and primary["ci"][0] > 0 and primary["sequential"]["p_value"] < 0.05
    looks = report["timeline"]["finetuned"]
    assert len(looks) > 10
    p_seq = [lk["p_sequential"] for lk in looks]
    assert all(a >= b for a, b in zip(p_seq, p_seq[1:]))  # always-valid p never goes back up
    # The sequential test's burn-in: no always-valid p before every arm has min_units_per_arm (20) units.
    early = [lk for lk in looks if min(lk["n_baseline"], lk["n_candidate"]) < 20]
    assert early and all(lk["p_sequential"] == 1.0 and lk["confidence_sequence"] == [None, None] for lk in early)
    assert report["per_arm"]["base"]["units"] + report["per_arm"]["finetuned"]["units"] == 300
    assert "winner finetuned" in markdown(report)
    # The report shows why it reads the sequential p-value: A/A simulated with this experiment's own looks.
    cal = report["aa_calibration"]
    assert cal["looks"] == len(looks) and cal["rate"] == pytest.approx(looks[-1]["baseline"], abs=1e-9)
    assert cal["fixed_read_every_look"] > cal["fixed_read_once"] and cal["sequential_read_every_look"] <= 0.06
    assert "simulated A/A experiments with this experiment's" in markdown(report)
    page = render(report)
    assert 'id="decision-finetuned"' in page and "<svg" in page


def test_no_difference_keeps_running_or_finds_none(tmp_path):
    store = fill(tmp_path, {"base": 0.5, "finetuned": 0.5}, users=200, seed=3)
    d = analyse(store, ab_config())["decisions"]["finetuned"]
    assert d["outcome"] in ("keep running", "no difference"), d


def test_lost_events_of_one_arm_raise_the_sample_ratio_alarm(tmp_path):
    store = fill(tmp_path, {"base": 0.3, "finetuned": 0.65}, users=400, drop={"finetuned": 0.4})
    report = analyse(store, ab_config())
    assert report["srm"]["alarm"] and report["decisions"]["finetuned"]["outcome"] == "invalid"
    assert "sample-ratio mismatch" in report["decisions"]["finetuned"]["reasons"][0]


def test_a_fixed_horizon_test_waits_for_the_planned_units(tmp_path):
    store = fill(tmp_path, {"base": 0.3, "finetuned": 0.65}, users=60)
    report = analyse(store, ab_config(sequential=False, mde_relative=0.1))
    assert report["power"]["planned_units_per_arm"] > 300
    d = report["decisions"]["finetuned"]
    assert d["outcome"] == "keep running" and "peeking" in d["reasons"][0]


def test_a_prompted_question_finds_its_reference():
    from app.ab.report import reference_for

    refs = {"What is X?": "X is a thing.", "Is X?": "Yes."}
    assert reference_for("What is X?", refs) == "X is a thing."
    assert reference_for("Answer using the context.\n\nContext:\nX...\n\nQuestion: What is X?\n", refs) == "X is a thing."
    assert reference_for("Something else", refs) is None


def test_a_live_change_of_the_split_is_not_a_sample_ratio_mismatch(tmp_path):
    """All traffic to the baseline for a while, then 50/50 again: expected units follow each period's split."""
    store = fill(tmp_path, {"base": 0.5, "finetuned": 0.5}, users=100, seed=5)
    store.record_split("exp", {"base": 1.0, "finetuned": 0.0}, "ramp-down")
    writer = EventWriter(str(store.engine.url), tmp_path / "spool2", interval_s=0.02)
    for u in range(60):
        writer.record({"id": f"late-{u}", "experiment": "exp", "unit": f"late-{u}", "arm": "base",
                       "model": "smollm2-135m-instruct", "role": "served", "status": "ok", "e2e_ms": 100.0})
    assert writer.flush(30)
    writer.close()
    store.record_split("exp", {"base": 0.5, "finetuned": 0.5}, "back")
    report = analyse(store, ab_config())
    assert not report["srm"]["alarm"], report["srm"]
    assert report["srm"]["expected"]["base"] > report["srm"]["expected"]["finetuned"] + 50
