import numpy as np
import pandas as pd
import pytest

from app.eval.report import METRICS, col, relative_improvement, summarize, tables, write_report


def table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"example_id": [f"e{i}" for i in range(n)], "question": [f"q{i}?" for i in range(n)],
                       "reference": ["ref"] * n, "context": [""] * n, "topic": [f"t{i % 3}" for i in range(n)],
                       "origin": ["llm" if i % 2 else "extract" for i in range(n)]})
    base = (rng.random(n) < 0.25).astype(float)
    tuned = np.maximum(base, (rng.random(n) < 0.6).astype(float))
    for m, correct in (("base", base), ("tuned", tuned)):
        df[col(m, "answer")] = np.where(correct == 1, "ref", "other")
        df[col(m, "error")] = ""
        for k in METRICS:
            df[col(m, k)] = correct if k != "semantic_similarity" else 0.5 + 0.5 * correct
    return df


def test_summary_means_comparisons_and_breakdowns():
    df = table()
    s = summarize(df, ["base", "tuned"], samples=500, confidence=0.95, seed=0, corpus_bleu={"base": 0.1, "tuned": 0.4})
    acc_b, acc_t = df[col("base", "domain_correct")].mean(), df[col("tuned", "domain_correct")].mean()
    assert s["means"]["base"]["domain_correct"]["mean"] == pytest.approx(acc_b)
    c = s["comparisons"]["tuned"]["domain_correct"]
    assert c["difference"] == pytest.approx(acc_t - acc_b) and c["wins_a"] == 0 and c["p_permutation"] < 0.01
    assert c["p_holm"] >= c["p_permutation"]
    assert relative_improvement(s, "tuned") == pytest.approx((acc_t - acc_b) / acc_b)
    topics = {r["topic"]: r for r in s["breakdown"]["topic"]}
    assert set(topics) == {"t0", "t1", "t2"} and sum(r["n"] for r in topics.values()) == 60
    t0 = df[df["topic"] == "t0"]
    assert topics["t0"]["tuned"]["domain_accuracy"] == pytest.approx(t0[col("tuned", "domain_correct")].mean())
    assert {r["origin"] for r in s["breakdown"]["origin"]} == {"llm", "extract"}
    # The paired tests again within each origin, with the detectable difference.
    within = s["comparisons_by_origin"]["llm"]["tuned"]["domain_correct"]
    llm = df[df["origin"] == "llm"]
    assert within["n"] == len(llm) and within["difference"] == pytest.approx(
        llm[col("tuned", "domain_correct")].mean() - llm[col("base", "domain_correct")].mean())
    assert 0 < within["detectable"] < 1
    t = tables(s)
    assert list(t["means"].columns) == ["metric", "base", "tuned"] and "BLEU (corpus)" in t["means"]["metric"].tolist()
    assert len(t["comparisons"]) == len(METRICS)


def test_report_files(tmp_path):
    df = table()
    s = summarize(df, ["base", "tuned"], samples=200, confidence=0.9, seed=0)
    facts = {"run_name": "r1", "test_set": "test split of ds", "retrieval": {"retrieved": 0}, "max_new_tokens": 64,
             "domain_definition": "correct when token F1 >= 0.5"}
    files = write_report(tmp_path, s, df, facts)
    md = files["markdown"].read_text()
    assert "## Paired comparisons" in md and "90% percentile bootstrap" in md and "![means](means.png)" in md
    assert "Domain accuracy of tuned relative to base: +" in md
    assert "Domain accuracy on llm questions (n=30): base" in md and "## Paired comparisons within each origin" in md
    html = files["html"].read_text()
    assert html.count("<table") == 7 and html.count("data:image/png;base64,") == 2
    assert files["means"].stat().st_size > 1000
