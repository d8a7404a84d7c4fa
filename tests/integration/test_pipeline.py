"""The main job resumes: killed after a stage finished, the re-run reuses that stage from its record
(not from timing) and runs the rest; one MLflow parent run per invocation, each stage its child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import BIN, ROOT

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1500)
def test_a_killed_pipeline_resumes_after_its_last_finished_stage(qa_docs, stored_model, mlflow_uri, home,
                                                                tmp_path):
    import mlflow

    sets = ["data.name=it-pipeline", "data.generation.enabled=false", "data.target_pairs=20", "data.min_test_pairs=1",
            f"data.docs_dir={qa_docs}", f"data.review_db=sqlite:///{tmp_path / 'review.db'}",
            f"tracking.uri={mlflow_uri}", "acceptance.min_pairs=5"]
    cmd = [str(BIN / "app"), "run", "--to", "build_dataset", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "RAY_ADDRESS": ""}
    records = home / "pipeline"

    # First run: killed (the whole process group, as a lost node or `ray job stop` would) once
    # prepare_model has finished, while build_dataset runs.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    deadline = time.time() + 900
    for line in proc.stdout:
        seen.append(line)
        if "== stage build_dataset: running" in line or time.time() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    text = "".join(seen)
    assert "== stage prepare_model: done" in text, text[-3000:]
    (first,) = list((records / "prepare_model").glob("*.json"))
    prepared = json.loads(first.read_text())
    assert prepared["status"] == "done" and prepared["mlflow_run_id"]
    assert not (records / "build_dataset").exists() or not list((records / "build_dataset").glob("*.json"))

    # The re-run: prepare_model reused from its record, build_dataset run, both recorded.
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = again.stdout
    assert f"== stage prepare_model: reused (record {prepared['record_id'][:8]}" in out, out[-3000:]
    assert "== stage build_dataset: running" in out and "== stage build_dataset: done" in out
    assert [p.name for p in (records / "prepare_model").glob("*.json")] == [first.name]
    assert json.loads(first.read_text())["record_id"] == prepared["record_id"]  # not rewritten
    summary = json.JSONDecoder().raw_decode(out[out.rindex('{\n  "stages"'):])[0]
    assert summary["stages"]["prepare_model"]["status"] == "reused"
    assert summary["stages"]["build_dataset"]["status"] == "ran"

    # The acceptance table: tracking listed in MLflow, the pair count the dataset stage itself reported.
    rows = {r["id"]: r for r in summary["acceptance"]}
    assert rows["tracking"]["status"] == "pass" and rows["tracking"]["figure"].startswith("2 of 2"), rows["tracking"]
    built = summary["stages"]["build_dataset"]["result"]
    assert rows["dataset_pairs"]["status"] == "pass"
    assert rows["dataset_pairs"]["figure"].startswith(f"{sum(built['pairs'].values())} (")
    assert rows["dataset_pairs"]["mlflow_run_id"] == built["run_id"]
    assert rows["validation_improvement"]["status"] == "not measured"  # --to build_dataset: not failed for it

    # MLflow: the re-run's parent holds a child per stage; prepare_model's child points at the first run.
    client = mlflow.MlflowClient(mlflow_uri)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.data.tags["app.stage"] == "pipeline" and parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {r.data.tags.get("app.stage") or r.data.tags.get("pipeline.stage"): r for r in children}
    assert set(by_stage) == {"prepare_model", "build_dataset"}, list(by_stage)
    assert by_stage["prepare_model"].data.tags["pipeline.original_run_id"] == prepared["mlflow_run_id"]
    assert by_stage["build_dataset"].info.run_id == summary["stages"]["build_dataset"]["mlflow_run_id"]

    # Everything current: nothing runs.
    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "== stage prepare_model: reused" in third.stdout and "== stage build_dataset: reused" in third.stdout
    assert ": running (key" not in third.stdout

    # A required criterion that fails makes the job exit non-zero, after the table is written.
    strict = subprocess.run(cmd + ["--set", "acceptance.min_pairs=100000"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert strict.returncode != 0 and "required acceptance criteria not met: dataset_pairs (fail" in strict.stderr, (
        strict.stdout[-2000:] + strict.stderr[-2000:])
