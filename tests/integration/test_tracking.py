"""MLflow through a real server: what a job records, rerun, compare, and bad configs writing nothing."""

import json
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from app.config import load_config
from app.tracking import CONFIG_ARTIFACT, HASH_TAG, STAGE_TAG, hash_path, log_step_metrics, log_table, start_run
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_start_run_records_everything_needed_to_reproduce(mlflow_uri, tmp_path):
    src = tmp_path / "exp.yaml"
    src.write_text("name: tracking-test\nlora: {r: 8}\n")
    data = tmp_path / "data.jsonl"
    data.write_text('{"q": "a"}\n')
    cfg = load_config(src)
    with start_run(cfg, "unit-stage", src, inputs={"dataset": hash_path(data)}) as run:
        for step in range(3):
            log_step_metrics({"loss": 1.0 / (step + 1)}, step=step)
        log_table([{"question": "q", "score": 1.0}], "tables/example.json")
    client = mlflow.MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.data.params["lora.r"] == "8"
    assert got.data.params["training.lr"] == str(cfg.training.lr)
    tags = got.data.tags
    assert tags[STAGE_TAG] == "unit-stage" and tags[HASH_TAG] == cfg.content_hash()
    assert len(tags["git.commit"]) == 40
    assert tags["pkg.ray"] == "2.60.0" and tags["pkg.torch"].startswith("2.13.0")
    assert tags["input.dataset.sha256"] == hash_path(data)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == pytest.approx([1, 0.5, 1 / 3])
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert arts == {"config/config.yaml", "config/source"}
    stored = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                                     artifact_path=CONFIG_ARTIFACT)).read_text())
    assert load_config(None, []).model_validate(stored).content_hash() == cfg.content_hash()
    versions = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="environment/packages.json")).read_text())
    assert versions["mlflow"] == mlflow.__version__
    table = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="tables/example.json"))
    assert json.loads(table.read_text())["data"] == [["q", 1.0]]


def test_invalid_config_exits_nonzero_and_writes_nothing(mlflow_uri, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: must-not-exist\nlora: {r: -1, dropout: 1.5}\ndata: {splits: {train: 0.9}}\n")
    fresh_home = tmp_path / "fresh-home"
    proc = run_cli(Path(sys.executable).name, "jobs/prepare_model.py", "--config", str(bad),
                   env={"DOMAIN_LLM_HOME": str(fresh_home)})
    assert proc.returncode == 2, proc.stderr
    assert "lora.r: Input should be greater than 0 (got -1)" in proc.stderr
    assert "lora.dropout: Input should be less than 1 (got 1.5)" in proc.stderr
    assert "data.splits: split fractions must sum to 1" in proc.stderr
    assert not fresh_home.exists()
    assert mlflow.get_experiment_by_name("must-not-exist") is None
    proc = run_cli("app", "config", "validate", "--config", str(bad))
    assert proc.returncode == 2 and "lora.r" in proc.stderr


def test_prepare_rerun_and_compare(mlflow_uri, stored_model, tmp_path):
    """A job run from the CLI, re-run by id with the identical config, and compared side by side."""
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("name: rerun-test\nray: {num_cpus: 2}\n")
    proc = run_cli("app", "model", "prepare", "--config", str(cfg_file), "--set", "lora.r=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert first["probe_accuracy"] >= 0.75

    proc = run_cli("app", "rerun", first["run_id"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert second["run_id"] != first["run_id"]
    assert second["config_hash"] == first["config_hash"]

    client = mlflow.MlflowClient()
    a, b = client.get_run(first["run_id"]), client.get_run(second["run_id"])
    assert b.data.tags["rerun_of"] == first["run_id"]
    assert b.data.tags[HASH_TAG] == a.data.tags[HASH_TAG]
    assert a.data.params == b.data.params and a.data.params["lora.r"] == "8"
    assert b.data.tags["input.model.sha256"] == a.data.tags["input.model.sha256"]

    plot = tmp_path / "cmp.png"
    proc = run_cli("app", "runs", "compare", first["run_id"], second["run_id"], "--out", str(plot))
    assert proc.returncode == 0, proc.stderr
    assert "metric probe_accuracy" in proc.stdout and first["config_hash"][:12] in proc.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    proc = run_cli("app", "rerun", "0" * 32)
    assert proc.returncode == 1 and "not found" in proc.stderr
