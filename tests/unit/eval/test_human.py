import json

import numpy as np
import pandas as pd
import pytest

from app.eval.agreement import agreement, metric_correlations, model_scores
from app.eval.human import HumanEvalError, HumanEvalStore, deal
from app.eval.report import METRICS, col


def eval_run(path, n=6, models=("base", "tuned")):
    """A finished evaluation run's files (as app.eval.run writes them)."""
    path.mkdir(parents=True)
    rows = []
    for i in range(n):
        r = {"example_id": f"e{i}", "question": f"What does f{i} do?", "reference": f"f{i} returns {i}.",
             "context": f"f{i}() returns {i}.", "topic": f"t{i % 2}", "origin": "llm"}
        for j, m in enumerate(models):
            r[col(m, "answer")] = f"It returns {i + j}." if j else f"f{i} gives {i}."
            r[col(m, "error")] = ""
            for k in METRICS:
                r[col(m, k)] = float((i + j) % 3 == 0) if k == "domain_correct" else ((i * 7 + j * 3) % 10) / 10
        rows.append(r)
    pd.DataFrame(rows).to_parquet(path / "examples.parquet")
    (path / "summary.json").write_text(json.dumps({"models": list(models)}))
    return path


def test_deal_balances_and_overlaps():
    dealt = deal(12, 3, 2, seed=0)
    assert all(len(set(d)) == 2 for d in dealt)
    loads = np.bincount([a for d in dealt for a in d])
    assert loads.tolist() == [8, 8, 8]
    pairs = {tuple(sorted(d)) for d in dealt}
    assert pairs == {(0, 1), (0, 2), (1, 2)}
    with pytest.raises(HumanEvalError, match="at least two annotators"):
        deal(5, 3, 1, 0)
    with pytest.raises(HumanEvalError, match="only 2 annotators"):
        deal(5, 2, 3, 0)


def test_study_is_blind_assigned_and_rated(tmp_path):
    store = HumanEvalStore(f"sqlite:///{tmp_path / 'h.db'}")
    run = eval_run(tmp_path / "run")
    made = store.create_study("s1", run, ["ann", "bob", "cy"], per_item=2, examples=4, seed=1)
    # 4 examples x (2 single + 1 pair) = 12 items, each to 2 of 3 annotators: 8 each.
    assert made["items"] == 12 and made["assignments"] == {"ann": 8, "bob": 8, "cy": 8}
    with pytest.raises(HumanEvalError, match="exists"):
        store.create_study("s1", run, ["x", "y"])
    with pytest.raises(HumanEvalError, match="unknown study, annotator, password or token"):
        store.login("s1", "ann", "wrong")
    ann = store.login("s1", "ann", made["tokens"]["ann"])
    item = store.next_item(ann)
    assert "model_a" not in item and "base" not in json.dumps(item) and "tuned" not in json.dumps(item)
    other = store.login("s1", "bob", made["tokens"]["bob"])
    mine = {store.next_item(ann)["item_id"]}
    with pytest.raises(HumanEvalError, match="not assigned to you"):
        unassigned = next(i for i in range(1, 13) if i not in
                          {x for x in range(1, 13) if _assigned(store, ann, x)})
        store.rate(ann, unassigned, {"preference": "A"})
    bad = {"correctness": 6, "groundedness": 3, "helpfulness": 3} if item["kind"] == "single" else {"preference": "C"}
    with pytest.raises(HumanEvalError, match="must be"):
        store.rate(ann, item["item_id"], bad)
    good = {"correctness": 4, "groundedness": 3, "helpfulness": 5} if item["kind"] == "single" else {"preference": "tie"}
    store.rate(ann, item["item_id"], good)
    assert store.next_item(ann)["item_id"] not in mine
    assert store.progress(ann) == {"done": 1, "total": 8} and store.progress(other)["done"] == 0
    store.rate(ann, item["item_id"], {**good, "note": "changed my mind"})  # a second rating replaces the first
    df = store.ratings("s1")
    assert len(df) == 1 and df["note"][0] == "changed my mind" and df["model_a"][0] in ("base", "tuned")
    assert store.status("s1")["ratings"] == 1 and store.status("s1")["expected"] == 24


def _rated_study(tmp_path):
    """A store with a two-annotator study; ann's first single and first pair item."""
    store = HumanEvalStore(f"sqlite:///{tmp_path / 'h.db'}")
    made = store.create_study("s1", eval_run(tmp_path / "run"), ["ann", "bob"], per_item=2, examples=2, seed=0)
    ann = store.login("s1", "ann", made["tokens"]["ann"])
    items = [store.item_for(ann, i) for i in range(1, made["items"] + 1)]
    single = next(i["item_id"] for i in items if i["kind"] == "single")
    pair = next(i["item_id"] for i in items if i["kind"] == "pair")
    return store, ann, single, pair


def _rating_rows(store):
    from sqlalchemy import select

    from app.eval.human import Rating

    with store._session() as s:
        return [(r.item_id, r.annotator_id, r.correctness, r.groundedness, r.helpfulness, r.preference, r.note,
                 r.updated_at) for r in s.scalars(select(Rating).order_by(Rating.id))]


GOOD = {"correctness": 4, "groundedness": 3, "helpfulness": 5}


@pytest.mark.parametrize("field, value, says", [
    ("correctness", 4.9, "correctness must be a whole number from 1 to 5, got 4.9"),
    ("correctness", True, "correctness must be a whole number from 1 to 5, got the boolean True"),
    ("groundedness", False, "groundedness must be a whole number from 1 to 5, got the boolean False"),
    ("helpfulness", "4.9", "helpfulness must be a whole number from 1 to 5, got '4.9'"),
    ("helpfulness", "true", "helpfulness must be a whole number from 1 to 5, got 'true'"),
    ("correctness", "", "correctness must be a whole number from 1 to 5, got ''"),
    ("correctness", " ", "correctness must be a whole number from 1 to 5, got ' '"),
    ("correctness", "4a", "correctness must be a whole number from 1 to 5, got '4a'"),
    ("correctness", "\u0664", "correctness must be a whole number from 1 to 5, got '\u0664'"),  # Arabic-Indic 4
    ("correctness", None, "correctness must be a whole number from 1 to 5; it is missing"),
    ("groundedness", "missing", "groundedness must be a whole number from 1 to 5; it is missing"),
    ("correctness", 0, "correctness must be a whole number from 1 to 5, got 0"),
    ("correctness", 6, "correctness must be a whole number from 1 to 5, got 6"),
    ("helpfulness", "-1", "helpfulness must be a whole number from 1 to 5, got -1"),
    ("helpfulness", "10", "helpfulness must be a whole number from 1 to 5, got 10"),
    ("correctness", 5.5, "got 5.5"), ("correctness", float("nan"), "got nan"), ("correctness", float("inf"), "got inf"),
    ("correctness", [4], "correctness must be a whole number from 1 to 5, got list [4]"),
    ("correctness", {"v": 4}, "got dict"),
    ("note", 5, "note must be text, got int 5"),
])
def test_a_refused_rating_names_the_field_and_range_and_stores_nothing(tmp_path, field, value, says):
    store, ann, single, _pair = _rated_study(tmp_path)
    store.rate(ann, single, {**GOOD, "note": "first"})
    before = _rating_rows(store)
    scores = {**GOOD}
    if value == "missing":
        del scores[field]
    else:
        scores[field] = value
    with pytest.raises(HumanEvalError) as exc:
        store.rate(ann, single, {**scores, "note": "second"} if field != "note" else scores)
    assert says in str(exc.value)
    assert _rating_rows(store) == before  # the earlier rating is untouched ...
    store.close()


def test_no_rating_is_stored_when_a_field_is_refused(tmp_path):
    store, ann, single, pair = _rated_study(tmp_path)
    for item, scores in ((single, {**GOOD, "helpfulness": 4.9}), (single, {**GOOD, "correctness": True}),
                         (pair, {"preference": "a"}), (pair, {"preference": ["A"]}), (pair, {"preference": None}),
                         (pair, {"preference": "A", "note": {"x": 1}})):
        with pytest.raises(HumanEvalError, match="must be"):
            store.rate(ann, item, scores)
    assert _rating_rows(store) == [] and len(store.ratings("s1")) == 0  # ... and none is added
    assert store.progress(ann)["done"] == 0
    store.close()


@pytest.mark.parametrize("value, stored", [(4, 4), ("4", 4), (" 5 ", 5), ("+1", 1), (3.0, 3), (np.int64(2), 2),
                                           (np.float64(5.0), 5)])
def test_whole_numbers_as_numbers_or_text_are_stored_as_ints(tmp_path, value, stored):
    store, ann, single, pair = _rated_study(tmp_path)
    out = store.rate(ann, single, {**GOOD, "correctness": value, "note": None})
    assert out["correctness"] == stored and type(out["correctness"]) is int and out["note"] == ""
    df = store.ratings("s1")
    assert df["correctness"].tolist() == [stored]
    assert store.rate(ann, pair, {"preference": "tie", "note": "x" * 3000})["note"] == "x" * 2000
    store.close()


def _assigned(store, annotator, item_id):
    try:
        store.item_for(annotator, item_id)
        return True
    except HumanEvalError:
        return False


def ratings_frame(rows):
    return pd.DataFrame(rows, columns=["item_id", "example_id", "kind", "annotator", "model_a", "model_b",
                                       "correctness", "groundedness", "helpfulness", "preference", "note"])


def test_agreement_by_hand():
    # Two annotators, four single items; correctness x = [5,4,2,1], y = [5,3,2,1].
    rows = []
    for item, (x, y) in enumerate([(5, 5), (4, 3), (2, 2), (1, 1)], 1):
        for who, v in (("a", x), ("b", y)):
            rows.append([item, f"e{item}", "single", who, "m", None, v, 3, 3, None, ""])
    # Three pair items, preferences a: A, A, B; b: A, B, B.
    for item, (x, y) in enumerate([("A", "A"), ("A", "B"), ("B", "B")], 10):
        for who, v in (("a", x), ("b", y)):
            rows.append([item, f"e{item}", "pair", who, "m", "n", None, None, None, v, ""])
    out = agreement(ratings_frame(rows), per_item=2)
    c = out["correctness"]
    # Cohen: 3 of 4 agree (p_o 0.75); marginals a {5,4,2,1}, b {5,3,2,1}: p_e = 3/16.
    assert c["cohen_kappa"][0]["kappa"] == pytest.approx((0.75 - 3 / 16) / (1 - 3 / 16))
    # Fleiss over the same 4 items x 2 raters: P_bar = 3/4; p_j = 2/8 for 5, 2, 1 and 1/8 for 4, 3.
    p_e = 3 * (2 / 8) ** 2 + 2 * (1 / 8) ** 2
    assert c["fleiss"]["kappa"] == pytest.approx((0.75 - p_e) / (1 - p_e))
    # Krippendorff nominal for preferences: coincidences A-A 2, B-B 2, A-B 1, B-A 1 (n = 6);
    # D_o = 2/6, D_e = (3*3 + 3*3) / (6*5) = 18/30: alpha = 1 - (2/6)/(18/30) = 4/9.
    assert out["preference"]["krippendorff_alpha"] == pytest.approx(4 / 9)
    assert out["groundedness"]["krippendorff_alpha"] is None  # one value everywhere: undefined
    assert out["correctness"]["krippendorff_alpha"] > 0.8


def test_model_scores_and_correlations():
    rows = [[1, "e1", "single", "a", "base", None, 2, 3, 3, None, ""], [1, "e1", "single", "b", "base", None, 4, 3, 3, None, ""],
            [2, "e1", "single", "a", "tuned", None, 5, 5, 5, None, ""], [3, "e2", "single", "a", "base", None, 1, 1, 1, None, ""],
            [4, "e2", "single", "a", "tuned", None, 4, 4, 4, None, ""],
            [5, "e1", "pair", "a", "tuned", "base", None, None, None, "A", ""],
            [5, "e1", "pair", "b", "tuned", "base", None, None, None, "tie", ""]]
    df = ratings_frame(rows)
    s = model_scores(df, ["base", "tuned"], 200, 0.95, 0)
    assert s["scores"]["base"]["correctness"]["mean"] == pytest.approx((3 + 1) / 2)  # item 1 averaged first
    assert s["preferences"]["tuned"] == {"against": "base", "votes": 2, "wins": 1, "losses": 0, "ties": 1}
    ex = pd.DataFrame({"example_id": ["e1", "e2"], **{col(m, k): v for m, v in (("base", [0.4, 0.2]), ("tuned", [0.9, 0.3]))
                                                      for k in METRICS}})
    corr = metric_correlations(df, ex)
    # Human (mean correctness) 3, 5, 1, 4 and metric 0.4, 0.9, 0.2, 0.3: rank differences 1, 0, 0, 1,
    # rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    assert corr["answers"] == 4 and corr["correctness"]["token_f1"]["rho"] == pytest.approx(0.8)


def test_sessions_are_stored_hashed_survive_reopening_and_expire(tmp_path):
    from datetime import timedelta

    from sqlalchemy import update

    from app.db import utc_now
    from app.eval.human import SESSION_DAYS, LoginSession

    url = f"sqlite:///{tmp_path / 'h.db'}"
    store = HumanEvalStore(url)
    made = store.create_study("s1", eval_run(tmp_path / "run"), ["ann", "bob"], per_item=2, examples=2, seed=0)
    ann = store.login("s1", "ann", made["tokens"]["ann"])
    sid, other = store.open_session(ann), store.open_session(ann)
    assert sid != other and store.session_annotator(sid) == ann
    assert store.session_annotator("") is None and store.session_annotator("forged") is None
    store.close()

    store = HumanEvalStore(url)  # a restarted server
    assert store.session_annotator(sid) == ann
    with store._session() as s:
        assert sid not in {r.id_hash for r in s.query(LoginSession)}  # only hashes are stored
    store.close_session(sid)
    assert store.session_annotator(sid) is None and store.session_annotator(other) == ann
    with store._session() as s, s.begin():
        s.execute(update(LoginSession).values(created_at=utc_now() - timedelta(days=SESSION_DAYS, seconds=1)))
    assert store.session_annotator(other) is None
    store.close()
