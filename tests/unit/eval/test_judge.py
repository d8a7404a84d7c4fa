import json

import pandas as pd
import pytest

from app.config import ConfigError, load_config
from app.eval.config import JudgeConfig
from app.eval.agreement import metric_correlations
from app.eval.judge import judge_messages, parse_verdict
from app.eval.report import METRICS, col, summarize, tables, write_report
from tests.unit.eval.test_report import table


@pytest.mark.parametrize("reply, verdict", [
    ("correct", 1.0), ("Correct.", 1.0), ("INCORRECT", 0.0), ("Incorrect - it misses the year.", 0.0),
    ("Yes, it matches.", 1.0), ("no", 0.0), ("The answer is correct; it is not incorrect.", 1.0),
    ("It is incorrect, not correct.", 0.0), ("I cannot tell.", None), ("", None), ("incorrectly spelled", None),
])
def test_verdict_is_the_first_verdict_word(reply, verdict):
    assert parse_verdict(reply) == verdict


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
