"""What defines a training run, and what a tune trial changes: pure functions of the config."""

import pytest

from app.config import ExperimentConfig, load_config
from app.train.run import TrainingError, check_resume, default_run_name, failure_message, relative_improvement, run_key
from app.train.tune import trial_config


def key(cfg: ExperimentConfig) -> dict:
    return run_key(cfg, "20261129-000000-abcd", "sha")


def test_run_name_is_stable_and_follows_the_settings_that_define_the_run():
    base = load_config(None, [])
    assert default_run_name(base, key(base)) == default_run_name(base, key(load_config(None, [])))
    assert default_run_name(base, key(base)).startswith("domain-llm-")
    # Schedule length, validation cadence and the like may change on resume: same run.
    longer = load_config(None, ["training.max_steps=400", "training.eval_every=10", "training.keep_checkpoints=5"])
    assert key(longer) == key(base)
    for change in ("training.lr=1e-3", "lora.r=8", "prompt.use_context=false", "seed=7", "training.zero_stage=3"):
        assert key(load_config(None, [change])) != key(base), change


def test_resuming_with_other_settings_names_them(tmp_path):
    base = load_config(None, [])
    check_resume(tmp_path, {"key": key(base)}, key(load_config(None, ["training.max_steps=999"])))
    with pytest.raises(TrainingError) as err:
        check_resume(tmp_path, {"key": key(base)}, key(load_config(None, ["lora.r=8", "training.lr=0.001"])))
    msg = str(err.value)
    assert "lora.r: 16 in the run, 8 now" in msg and "training.lr: 0.0002 in the run, 0.001 now" in msg
    assert "training.run_name" in msg


def test_trial_config_takes_the_sample_and_the_search_schedule():
    cfg = load_config(None, ["tune.max_steps=12", "tune.eval_every=4", "tune.num_workers=1", "tune.cpus_per_worker=2"])
    t = trial_config(cfg, {"r": 32, "alpha": 64.0, "lr": 3e-4}, "search-abc")
    assert (t.lora.r, t.lora.alpha, t.training.lr) == (32, 64.0, 3e-4)
    assert (t.training.max_steps, t.training.eval_every, t.training.num_workers) == (12, 4, 1)
    assert t.training.run_name == "search-abc" and not t.training.register_model and not t.training.compare_on_validation
    assert t.data == cfg.data and t.prompt == cfg.prompt


def test_worker_errors_are_pulled_out_of_ray_trains_report():
    wrapped = RuntimeError("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nTraceback ...\n"
                           "app.train.checkpoint.CheckpointError: checkpoint /x/step-000004 is corrupt: reason\n")
    assert failure_message(wrapped) == "checkpoint /x/step-000004 is corrupt: reason"
    assert relative_improvement(0.5, 0.6) == pytest.approx(0.2) and relative_improvement(0.0, 0.3) is None
