"""The main job's selection and keys: what re-runs when a setting or an upstream stage changes."""

from __future__ import annotations

import json

import pytest

from app.config import ExperimentConfig
from app.config import ConfigError, load_config
from app.pipeline import (
    PIPELINE,
    PipelineError,
    check_settings,
    read_record,
    select,
    stage_config,
    stage_key,
    times_markdown,
    write_record,
)


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
    assert select(PIPELINE, from_stage="finetune") == (
        ["finetune", "evaluate", "quantize", "ab_test", "benchmark"], {"finetune"})
    assert select(PIPELINE, from_stage="finetune", to_stage="evaluate") == (["finetune", "evaluate"], {"finetune"})
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


def test_stage_overrides_apply_to_their_stage_only_and_enter_its_key():
    cfg = ExperimentConfig()
    assert cfg.stage_config("quantize").quantize.methods == ["gptq"] and cfg.quantize.methods == ["awq", "gptq"]
    assert cfg.stage_config("finetune") is cfg  # no overrides: the config as written
    bench = cfg.stage_config("benchmark").bench
    assert bench.profiles == ["steady"] and bench.suites.run == ["tuned_vs_default", "int4_vs_bf16"]
    light = stage_key(cfg.stage_config("quantize"), "quantize", {}, None)[0]
    full = stage_key(ExperimentConfig(pipeline={"overrides": {}}).stage_config("quantize"), "quantize", {}, None)[0]
    assert light != full
    # The A/B stage's experiment is named after its key: a re-run on other models is a new experiment.
    assert stage_config(cfg, "ab_test", "0123456789abcdef").ab.experiment == "ft-vs-base-01234567"


def test_stage_overrides_are_checked_before_anything_runs():
    with pytest.raises(ConfigError, match=r"(?s)pipeline.overrides.quantize.*quantize.methods.0: Input should be"):
        load_config(None, ['pipeline.overrides.quantize=["quantize.methods=[foo]"]'])
    with pytest.raises(ConfigError, match="sets the pipeline section itself"):
        load_config(None, ['pipeline.overrides.quantize=["pipeline.total_budget_s=1"]'])
    with pytest.raises(ConfigError, match="not of the form section.field=value"):
        load_config(None, ['pipeline.overrides.quantize=["quantize.qat"]'])
    check_settings(ExperimentConfig(), PIPELINE)  # the defaults
    with pytest.raises(PipelineError, match="pipeline.overrides names tune_lora: not a stage of the main job"):
        check_settings(ExperimentConfig(pipeline={"overrides": {"tune_lora": ["tune.num_samples=2"]}}), PIPELINE)
    with pytest.raises(PipelineError, match="pipeline.budgets_s names nope"):
        check_settings(ExperimentConfig(pipeline={"budgets_s": {"nope": 1}}), PIPELINE)
    with pytest.raises(PipelineError, match=r"bench.profiles=\[steady\] would change nothing: stage quantize reads"):
        check_settings(ExperimentConfig(pipeline={"overrides": {"quantize": ["bench.profiles=[steady]"]}}), PIPELINE)


def test_stage_times_against_their_budgets():
    summary = {"seconds": 4000.0, "stages": {
        "prepare_model": {"status": "reused", "seconds": 0.0, "budget_s": 120, "first_run_seconds": 50.2},
        "finetune": {"status": "ran", "seconds": 1300.0, "budget_s": 1200, "peak_memory_gib": 11.5},
        "evaluate": {"status": "ran", "seconds": 300.0, "budget_s": 420}}}
    text = times_markdown(summary, 3600)
    assert "| prepare_model | reused | 0 (reused; 50.2 when run) | 120 | - |" in text
    assert "| finetune | ran | 1300.0 | 1200 | **no** | 11.5 |" in text
    assert "| evaluate | ran | 300.0 | 420 | yes |" in text
    assert "| **total** | | 4000 | 3600 | **no** |" in text


def test_the_memory_peak_is_the_machines_highest_use_per_interval():
    from app.pipeline import MemoryPeak

    with MemoryPeak(every_s=0.05) as memory:
        first = memory.reset()
        assert first > 0 and MemoryPeak.used() > 0
        memory.peak = first + 2**30  # as if the sampler had seen a higher point during the interval
        assert memory.reset() == first + 2**30
        assert memory.reset() < first + 2**30  # a new interval starts from the current use
