"""The main job's selection and keys: what re-runs when a setting or an upstream stage changes."""

from __future__ import annotations

import json

import pytest

from app.config import ExperimentConfig
from app.pipeline import PIPELINE, PipelineError, read_record, select, stage_key, write_record


def keys(cfg: ExperimentConfig, forced_upstream: dict[str, str] | None = None) -> dict[str, str]:
    """Each stage's key, chaining record ids as the pipeline does (a record id per stage: its key here,
    unless ``forced_upstream`` gives that stage's run a new one)."""
    upstream: dict[str, str] = {}
    out = {}
    for name in PIPELINE:
        key, _ = stage_key(cfg, name, upstream, "docs-hash")
        out[name] = key
        from app.stages import REGISTRY

        rid = (forced_upstream or {}).get(name, key)
        upstream.update({a: rid for a in REGISTRY[name].produces})
    return out


def test_a_setting_re_runs_the_stages_that_read_it_and_what_depends_on_them():
    base = keys(ExperimentConfig())
    assert keys(ExperimentConfig()) == base  # deterministic
    lr = keys(ExperimentConfig(training={"lr": 1e-4}))
    # Keys are per section: build_dataset reads training (use_gpu, for its generation engine), so it re-runs too.
    assert lr["prepare_model"] == base["prepare_model"]
    assert all(lr[n] != base[n] for n in ("build_dataset", "finetune", "evaluate"))
    seed = keys(ExperimentConfig(model={"dtype": "float32"}))
    assert all(seed[n] != base[n] for n in PIPELINE)
    docs = keys(ExperimentConfig(data={"chunk_tokens": 128}))
    assert docs["prepare_model"] == base["prepare_model"]
    assert all(docs[n] != base[n] for n in ("build_dataset", "finetune", "evaluate"))


def test_a_forced_stage_changes_everything_downstream_only():
    base = keys(ExperimentConfig())
    forced = keys(ExperimentConfig(), {"build_dataset": "a-new-record-id"})
    assert forced["prepare_model"] == base["prepare_model"] and forced["build_dataset"] == base["build_dataset"]
    assert forced["finetune"] != base["finetune"] and forced["evaluate"] != base["evaluate"]


def test_selection_flags():
    assert select(PIPELINE) == (PIPELINE, set())
    assert select(PIPELINE, from_stage="finetune") == (["finetune", "evaluate"], {"finetune"})
    assert select(PIPELINE, to_stage="build_dataset") == (["prepare_model", "build_dataset"], set())
    assert select(PIPELINE, only=["evaluate", "prepare_model"], force=["evaluate"]) == (
        ["prepare_model", "evaluate"], {"evaluate"})
    with pytest.raises(PipelineError, match="--only nope: not a stage of the main job"):
        select(PIPELINE, only=["nope"])
    with pytest.raises(PipelineError, match="--from evaluate comes after --to finetune"):
        select(PIPELINE, from_stage="evaluate", to_stage="finetune")
    with pytest.raises(PipelineError, match="cannot be combined"):
        select(PIPELINE, only=["evaluate"], from_stage="finetune")


def test_a_record_is_whole_or_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAIN_LLM_HOME", str(tmp_path))  # it overrides paths.home
    cfg = ExperimentConfig()
    assert read_record(cfg, "finetune", "k1") is None
    write_record(cfg, {"stage": "finetune", "key": "k1", "record_id": "r", "status": "done"})
    assert read_record(cfg, "finetune", "k1")["record_id"] == "r"
    assert not list((tmp_path / "pipeline" / "finetune").glob("*.tmp-*"))
    (tmp_path / "pipeline" / "finetune" / "k2.json").write_text('{"stage": "finetune", "key": "k2"')  # cut short
    assert read_record(cfg, "finetune", "k2") is None
    (tmp_path / "pipeline" / "finetune" / "k3.json").write_text(json.dumps({"key": "k3", "status": "running"}))
    assert read_record(cfg, "finetune", "k3") is None
