"""The acceptance table reads the stages' own figures, states thresholds, and fails only what it should."""

from __future__ import annotations

import json

from app.acceptance import FAIL, PASS, UNMEASURED, acceptance_table, failed_required, markdown
from app.config import ExperimentConfig


def comp(a, b, lo, hi, n=None):
    return {"mean_a": a, "mean_b": b, "difference": b - a, "low": lo, "high": hi, "p_permutation": 0.01,
            **({"n": n} if n else {})}


def results(tmp_path, human=True):
    means = {k: {"mean": 0.5, "low": 0.4, "high": 0.6} for k in
             ("bleu", "rouge1", "rouge2", "rougeL", "semantic_similarity", "exact_match", "token_f1", "domain_correct")}
    summary = {"examples": 236, "models": ["base", "ft"], "reference": "base", "means": {"base": means, "ft": means},
               "comparisons": {"ft": {"domain_correct": comp(0.419, 0.797, 0.30, 0.45)}},
               "comparisons_by_origin": {"human": {"ft": {"domain_correct": comp(0.50, 0.51, -0.02, 0.05, 234)}}}
               if human else {}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return {"build_dataset": {"run_id": "d", "pairs": {"train": 1200, "validation": 300, "test": 236}},
            "finetune": {"run_id": "f", "validation_comparison": {
                "examples": 300, "domain_accuracy": {"base": 0.502, "finetuned": 0.740}}},
            "evaluate": {"run_id": "e", "output": str(tmp_path)}}


def test_each_row_has_the_stages_figure_and_its_verdict(tmp_path):
    rows = {r["id"]: r for r in acceptance_table(ExperimentConfig(), results(tmp_path), {})}
    assert rows["tracking"]["status"] == FAIL and rows["tracking"]["figure"].startswith("0 of 0")
    assert rows["dataset_pairs"]["status"] == PASS and rows["dataset_pairs"]["figure"].startswith("1736 ")
    assert rows["dataset_pairs"]["mlflow_run_id"] == "d"
    assert rows["validation_improvement"]["status"] == PASS and "0.502 -> 0.740" in rows["validation_improvement"]["figure"]
    assert rows["evaluation"]["status"] == PASS and rows["evaluation"]["figure"].startswith("8 of 8")
    assert rows["improvement_test"]["status"] == PASS and "+90.2% relative" in rows["improvement_test"]["figure"]
    human = rows["improvement_human"]
    assert human["status"] == FAIL and "+2.0% relative" in human["figure"] and "n=234" in human["figure"]
    for cid in ("quantization", "serving_speedup", "ab_significance", "benchmark_consistency"):
        assert rows[cid]["status"] == UNMEASURED and "not part of this run" in rows[cid]["why"]
    md = markdown(list(rows.values()))
    assert "| quality-checked QA pairs | pass | 1736 (train 1200, validation 300, test 236) | >= 1000 | yes | d |" in md


def test_required_failures_and_partial_runs(tmp_path):
    cfg = ExperimentConfig(acceptance={"required": ["dataset_pairs", "improvement_human", "quantization"],
                                       "min_pairs": 2000})
    rows = acceptance_table(cfg, results(tmp_path, human=False), {})
    by = {r["id"]: r for r in rows}
    assert by["improvement_human"]["status"] == UNMEASURED and "no human-written questions" in by["improvement_human"]["why"]
    # dataset_pairs fails; improvement_human was not measured although evaluate ran; quantization's stage did not run.
    assert [r["id"] for r in failed_required(rows, ["build_dataset", "finetune", "evaluate"])] == [
        "dataset_pairs", "improvement_human"]
    # A run that stopped after the dataset is not failed for the evaluation it left out.
    partial = acceptance_table(cfg, {k: v for k, v in results(tmp_path).items() if k == "build_dataset"}, {})
    assert [r["id"] for r in failed_required(partial, ["prepare_model", "build_dataset"])] == ["dataset_pairs"]


def later_stages(tmp_path, *, drop=-0.005, ratio=1.327, beyond=True, outcome="winner", p=0.003, int4_worse=True):
    """The quantize, A/B and benchmark stages' summaries as they return them (suites.json on disk)."""
    suites = {"tuned_vs_default": {"status": "ok", "mlflow_run_id": "sw", "rows": [
                  {"figure": "best output tok/s under the SLO", "ratio": ratio, "baseline": 242.1, "candidate": 321.4,
                   "spread": [1.24, 1.42], "beyond_noise": beyond, "higher_is_better": True}]},
              "int4_vs_bf16": {"status": "ok", "mlflow_run_id": "i4", "rows": [
                  {"figure": "checkpoint MiB", "ratio": 0.42, "beyond_noise": True, "higher_is_better": False},
                  {"figure": "c=8 output tok/s", "ratio": 0.73 if int4_worse else 1.0, "beyond_noise": int4_worse,
                   "higher_is_better": True}]},
              "vllm_vs_hf": {"status": "failed", "rows": [], "reason": "boom"}}
    folder = tmp_path / "suites"
    folder.mkdir(exist_ok=True)
    (folder / "suites.json").write_text(json.dumps({"suites": suites}))
    return {"quantize": {"run_id": "q", "sizes": [{"model": "ft", "size_reduction": 0.0},
                                                  {"model": "ft-gptq", "size_reduction": 0.576}],
                         "accuracy": {"variants": {"ft-gptq": {"accuracy": 0.78, "relative_drop": drop, "n": 236,
                                                               "relative_ci": [drop - 0.055, drop + 0.049]}}}},
            "ab_test": {"mlflow_run_id": "ab", "report": {"decisions": {"finetuned": {
                "outcome": outcome, "winner": "finetuned" if outcome == "winner" else None, "p_value": p,
                "reasons": ["primary thumbs_up: 0.446 -> 0.746"]}}}},
            "benchmark": {"mlflow_run_id": "rep", "suites": str(folder)}}


def test_the_later_stages_rows_read_their_own_summaries(tmp_path):
    rows = {r["id"]: r for r in acceptance_table(ExperimentConfig(), results(tmp_path) | later_stages(tmp_path), {})}
    q = rows["quantization"]
    assert q["status"] == PASS and q["mlflow_run_id"] == "q"
    assert "ft-gptq: 58% smaller, relative drop -0.5% [-6.0%, +4.4%]" in q["figure"]
    assert "interval reaches +4.4%" in q["why"]  # met on the point estimate only, and it says so
    s = rows["serving_speedup"]
    assert s["status"] == PASS and s["figure"].startswith("x1.327 (321 vs 242 tok/s") and s["mlflow_run_id"] == "sw"
    ab = rows["ab_significance"]
    assert ab["status"] == PASS and "finetuned: winner finetuned, p = 0.003" in ab["figure"]
    c = rows["benchmark_consistency"]
    # INT4 is smaller (its primary) but slower beyond noise: inconsistent; the failed suite is not counted.
    assert c["status"] == FAIL and "int4_vs_bf16" in c["why"] and "worse: c=8 output tok/s" in c["figure"]
    assert "vllm_vs_hf" not in c["figure"]


def test_the_later_stages_rows_fail_or_stay_unmeasured_when_they_should(tmp_path):
    bad = later_stages(tmp_path, drop=0.05, ratio=1.2, outcome="keep running", p=0.2, int4_worse=False)
    rows = {r["id"]: r for r in acceptance_table(ExperimentConfig(), results(tmp_path) | bad, {})}
    assert rows["quantization"]["status"] == FAIL and "relative drop +5.0%" in rows["quantization"]["figure"]
    assert rows["quantization"]["why"] == ("no variant is both small enough and within the drop: ft-gptq: relative "
                                           "drop +5.0% (interval [-0.5%, +9.9%], which also includes drops under "
                                           "the threshold: n is too small to tell)")
    assert rows["serving_speedup"]["status"] == FAIL and "below the threshold" in rows["serving_speedup"]["why"]
    assert rows["ab_significance"]["status"] == FAIL and "keep running" in rows["ab_significance"]["figure"]
    assert rows["benchmark_consistency"]["status"] == PASS
    noisy = later_stages(tmp_path, beyond=False)
    row = {r["id"]: r for r in acceptance_table(ExperimentConfig(), noisy, {})}["serving_speedup"]
    assert row["status"] == FAIL and "not beyond the spread" in row["why"]
    (tmp_path / "suites" / "suites.json").write_text(json.dumps({"suites": {}}))
    rows = {r["id"]: r for r in acceptance_table(ExperimentConfig(), noisy, {})}
    assert rows["serving_speedup"]["status"] == UNMEASURED and "no tuned_vs_default" in rows["serving_speedup"]["why"]
    assert rows["benchmark_consistency"]["status"] == UNMEASURED
