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
