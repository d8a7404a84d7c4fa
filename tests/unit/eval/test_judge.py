import json
import math

import numpy as np
import pandas as pd
import pytest

from app.config import ConfigError, load_config
from app.eval.agreement import metric_correlations
from app.eval.config import JudgeConfig
from app.eval.judge import (
    NO_VERDICT,
    Verdict,
    judge_answers,
    judge_messages,
    parse_verdict,
    read_verdict,
)
from app.eval.report import METRICS, col, summarize, tables, write_report
from tests.unit.eval.test_report import table

# (reply, outcome): every reply the first-verdict-word parser read wrongly, then the rest of the rules.
FOOLED_THE_OLD_PARSER = [
    ("not correct", "incorrect"), ("Not correct.", "incorrect"), ("The answer isn't correct.", "incorrect"),
    ("It isn’t correct", "incorrect"), ("It is not right.", "incorrect"), ("The answer is not correct at all", "incorrect"),
    ("not entirely correct", "incorrect"), ("Not fully correct: the year is missing.", "incorrect"),
    ("not quite right", "incorrect"), ("It is not 100% correct.", "incorrect"), ("It cannot be correct.", "incorrect"),
    ("partially correct", "incorrect"),
    ("Partly correct: it misses the year.", "incorrect"), ("mostly correct", "incorrect"), ("almost right", "incorrect"),
    ("not incorrect", "correct"), ("not completely wrong", "incorrect"),
    ("I cannot determine whether it is correct.", "abstain"), ("I'm not sure it is correct", "abstain"),
    ("Unsure whether it is correct.", "abstain"), ("No idea", "abstain"),
    ("Correct ... incorrect", "ambiguous"), ("Correct. Actually, incorrect.", "ambiguous"),
    ("No, it is correct.", "ambiguous"), ("correct/incorrect: correct", "ambiguous"),
    ("Verdict: correct\nFinal verdict: incorrect", "ambiguous"), ("neither correct nor incorrect", "ambiguous"),
    ("Correct.\nVerdict: incorrect", "incorrect"),
    ("The correct answer is 1999; the candidate says 2001.", "unparsed"),
]
READ_AS_BEFORE = [
    ("correct", "correct"), ("Correct.", "correct"), ("INCORRECT", "incorrect"),
    ("Incorrect - it misses the year.", "incorrect"), ("Yes, it matches.", "correct"), ("no", "incorrect"),
    ("The answer is correct; it is not incorrect.", "correct"), ("It is incorrect, not correct.", "incorrect"),
    ("incorrectly spelled", "unparsed"), ("The candidate says 1999.", "unparsed"),
    ("There is no mention of the year, so it is incorrect.", "incorrect"),
    ("Correct. There is no contradiction.", "correct"), ("Correct answer.", "correct"),
    ("There is no correct statement in it", "incorrect"),
]
NEW_WORDS = [  # no verdict for the old parser
    ("Nope.", "incorrect"), ("True", "correct"), ("False.", "incorrect"), ("The answer is wrong.", "incorrect"),
    ("the answer is right", "correct"), ("The answer is accurate.", "correct"), ("inaccurate", "incorrect"),
    ("Incomplete.", "incorrect"),
]
ABSTENTIONS = [
    ("", "abstain"), ("   \n ", "abstain"), (None, "abstain"), ("I cannot judge this.", "abstain"),
    ("I cannot tell.", "abstain"), ("Cannot determine.", "abstain"), ("It cannot be determined.", "abstain"),
    ("Unable to verify the date.", "abstain"), ("Unsure.", "abstain"), ("Not sure.", "abstain"),
    ("Hard to say.", "abstain"), ("Not enough information to grade.", "abstain"), ("N/A", "abstain"),
    ("n/a.", "abstain"), ("Verdict: N/A", "abstain"), ("I'm sorry, but I can't help with that.", "abstain"),
    # A verdict before the abstention in the deciding line wins.
    ("Incorrect. I cannot verify the date.", "incorrect"), ("Correct, although I cannot verify the year.", "correct"),
]
FORMATTED = [
    ("**Correct**", "correct"), ("**Incorrect**", "incorrect"), ("Verdict: INCORRECT.", "incorrect"),
    ("Verdict: **correct**", "correct"), ("`correct`", "correct"), ('"Incorrect"', "incorrect"),
    ("“Correct.”", "correct"), ("'incorrect'", "incorrect"), ("<verdict>correct</verdict>", "correct"),
    ("Verdict:\nCorrect", "correct"), ("Final answer: Correct", "correct"), ("Grade: wrong", "incorrect"),
    ("Verdict - incorrect", "incorrect"), ("## Verdict: correct\nThe reference says it is incorrect to ...", "correct"),
    # Without a label the first line with a verdict decides; the explanation after it is not read.
    ("Let me compare.\nIncorrect.", "incorrect"), ("The answer is correct.\nIt is incorrect in one detail.", "correct"),
]


@pytest.mark.parametrize("reply, outcome", FOOLED_THE_OLD_PARSER + READ_AS_BEFORE + NEW_WORDS + ABSTENTIONS + FORMATTED)
def test_verdicts_are_read_with_negation_abstention_contradiction_and_formatting(reply, outcome):
    verdict = read_verdict(reply)
    assert verdict.outcome == outcome, verdict
    assert parse_verdict(reply) == {"correct": 1.0, "incorrect": 0.0}.get(outcome)
    assert verdict.score == parse_verdict(reply) and verdict.because


def test_every_outcome_but_a_verdict_has_no_score():
    assert NO_VERDICT == ("abstain", "ambiguous", "unparsed")
    assert all(Verdict(o, "x").score is None for o in NO_VERDICT)
    assert Verdict("correct", "x").score == 1.0 and Verdict("incorrect", "x").score == 0.0


def test_replies_without_a_verdict_and_failed_requests_are_left_out_and_counted(monkeypatch):
    cfg = load_config(None, ["evaluation.judge.model={name: j}"])
    frame = pd.DataFrame({"question": [f"q{i}" for i in range(7)], "reference": ["r"] * 7})
    answers = ["a", "a", "", "a", "a", "a", "a"]
    asked = []

    def fake_answer_all(sub, messages, model, cfg_, progress, max_tokens):
        asked.append(len(messages))
        replies = ["Correct", "Not correct", "I cannot judge this", "correct ... incorrect", "The candidate says 1999", ""]
        errors = ["", "", "", "", "", "timed out"]
        return replies, errors, {"seconds": 1.5}

    monkeypatch.setattr("app.eval.judge.answer_all", fake_answer_all)
    lines = []
    scores, replies, facts = judge_answers(frame, answers, "m", cfg, lines.append)
    assert asked == [6]  # the empty answer is not sent ...
    assert scores[:3] == [1.0, 0.0, 0.0]  # ... and is a wrong answer
    assert all(math.isnan(v) for v in scores[3:])  # abstained, ambiguous, unparsed, failed: no verdict
    assert replies[2] == "" and replies[3] == "I cannot judge this"
    assert facts == {"judge": "j", "asked": 6, "verdicts": 2, "no_verdict": 3, "abstain": 1, "ambiguous": 1,
                     "unparsed": 1, "request_errors": 1, "excluded": 4, "seconds": 1.5}
    assert "left out of its LLM-judge accuracy" in lines[-1]


def test_judge_accuracy_leaves_out_examples_without_a_verdict(tmp_path):
    df = judged_table()
    base, tuned = col("base", "judge_correct"), col("tuned", "judge_correct")
    df.loc[:4, base] = np.nan  # the judge gave no verdict on five of base's answers ...
    df.loc[3:9, tuned] = np.nan  # ... and on seven of tuned's (two of them the same examples)
    s = summarize(df, ["base", "tuned"], samples=200, confidence=0.95, seed=0)
    assert s["judge_excluded"] == {"base": 5, "tuned": 7}
    mean = s["means"]["base"]["judge_correct"]
    assert mean["n"] == len(df) - 5 and mean["mean"] == pytest.approx(df[base].dropna().mean())
    c = s["comparisons"]["tuned"]["judge_correct"]
    both = df[base].notna() & df[tuned].notna()
    assert c["n"] == both.sum() == len(df) - 10
    assert c["difference"] == pytest.approx((df[tuned][both] - df[base][both]).mean())
    assert not math.isnan(c["p_holm"])
    assert s["comparisons"]["tuned"]["domain_correct"]["n"] == len(df)  # the other metrics keep every example
    facts = {"run_name": "r", "test_set": "t", "retrieval": {}, "max_new_tokens": 8, "domain_definition": "d",
             "judge": {"definition": "correct when the judge says so"}}
    md = write_report(tmp_path, s, df, facts)["markdown"].read_text()
    assert "left out of the LLM-judge accuracy and its comparisons: {'base': 5, 'tuned': 7}" in md
    # A judge that never gave a verdict: no figure (NaN), no test, nothing raised.
    df[base] = np.nan
    s = summarize(df, ["base", "tuned"], samples=50, confidence=0.95, seed=0)
    assert s["means"]["base"]["judge_correct"]["n"] == 0 and math.isnan(s["means"]["base"]["judge_correct"]["mean"])
    c = s["comparisons"]["tuned"]["judge_correct"]
    assert c["n"] == 0 and math.isnan(c["p_holm"]) and not math.isnan(s["comparisons"]["tuned"]["token_f1"]["p_holm"])
    write_report(tmp_path, s, df, facts)
    assert "nan" in tables(s)["means"].set_index("metric").loc["LLM-judge accuracy", "base"]
    # Judged tables without a NaN have no count to report.
    assert "left out of the LLM-judge" not in write_report(tmp_path, summarize(
        judged_table(), ["base", "tuned"], samples=50, confidence=0.95, seed=0), judged_table(), facts)["markdown"].read_text()


def test_judge_prompt_holds_the_three_texts_verbatim():
    judge = JudgeConfig(model={"name": "judge"})
    [msg] = judge_messages(["What is {x}?"], ["A dict {a: 1}."], ["{a: 1}"], judge)
    system, user = json.loads(msg)
    assert system["role"] == "system" and user["role"] == "user"
    assert "Question: What is {x}?" in user["content"] and "Reference answer: A dict {a: 1}." in user["content"]
    assert "Candidate answer: {a: 1}" in user["content"]


def test_judge_prompt_must_name_every_placeholder():
    with pytest.raises(ConfigError, match=r"missing \['reference'\]"):
        load_config(None, ["evaluation.judge.model={name: j}", "evaluation.judge.prompt=Q {question} A {answer}"])
    with pytest.raises(ConfigError, match=r"unknown \['context'\]"):
        load_config(None, ["evaluation.judge.model={name: j}",
                           "evaluation.judge.prompt=Grade {question} {reference} {answer} {context}"])
    assert load_config(None, []).evaluation.judge is None


def judged_table():
    df = table()
    for m in ("base", "tuned"):
        df[col(m, "judge_correct")] = df[col(m, "domain_correct")]
        df[col(m, "judge_reply")] = df[col(m, "judge_correct")].map({1.0: "correct", 0.0: "incorrect"})
    return df


def test_judge_accuracy_is_summarized_compared_and_reported(tmp_path):
    df = judged_table()
    s = summarize(df, ["base", "tuned"], samples=200, confidence=0.95, seed=0)
    assert s["metrics"] == [*METRICS, "judge_correct"]
    assert s["means"]["tuned"]["judge_correct"]["mean"] == pytest.approx(df[col("tuned", "judge_correct")].mean())
    assert "judge_correct" in s["comparisons"]["tuned"] and "p_holm" in s["comparisons"]["tuned"]["judge_correct"]
    t = tables(s)
    assert "LLM-judge accuracy" in t["means"]["metric"].tolist() and len(t["comparisons"]) == len(METRICS) + 1
    facts = {"run_name": "r", "test_set": "t", "retrieval": {}, "max_new_tokens": 8, "domain_definition": "d",
             "judge": {"definition": "correct when the judge says so"}}
    md = write_report(tmp_path, s, df, facts)["markdown"].read_text()
    assert "LLM-judge accuracy: correct when the judge says so" in md and "| LLM-judge accuracy |" in md
    # Without a judge, nothing of it appears.
    plain = summarize(table(), ["base", "tuned"], samples=50, confidence=0.95, seed=0)
    assert plain["metrics"] == METRICS and "LLM-judge accuracy" not in tables(plain)["means"]["metric"].tolist()


def test_human_scores_are_correlated_with_the_judge_too():
    df = judged_table().head(6).copy()
    df[col("tuned", "judge_correct")] = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    ratings = pd.DataFrame([{"kind": "single", "example_id": e, "model_a": "tuned", "annotator": a,
                             "correctness": 1 + 4 * c, "groundedness": 3, "helpfulness": 1 + 4 * c}
                            for e, c in zip(df["example_id"], df[col("tuned", "judge_correct")]) for a in ("ann", "bob")])
    corr = metric_correlations(ratings, df)
    assert corr["correctness"]["judge_correct"]["rho"] == pytest.approx(1.0)
    # An answer the judge gave no verdict on leaves only the judge's correlation, not the other metrics'.
    df.loc[df.index[0], col("tuned", "judge_correct")] = np.nan
    corr = metric_correlations(ratings, df)
    assert corr["answers"] == 6 and corr["correctness"]["judge_correct"]["rho"] == pytest.approx(1.0)
    assert corr["correctness"]["token_f1"] == metric_correlations(ratings, judged_table().head(6))["correctness"]["token_f1"]
