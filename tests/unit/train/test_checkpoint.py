"""Checkpoint reading, compatibility and naming: every failure names the checkpoint and the reason."""

import json

import pytest

from app.train import checkpoint as ck

FP = {"base_model": {"name": "smollm2-135m-instruct", "sha256": "abc"},
      "lora": {"r": 16, "alpha": 32.0, "target_modules": ["q_proj", "v_proj"], "bias": "none"}}


def make_ckpt(root, step, metrics=None, world=2, zero=2, precision="bf16", adapter=None):
    d = root / ck.step_dir_name(step)
    (d / ck.DS_DIR / ck.DS_TAG).mkdir(parents=True)
    for r in range(world):
        (d / ck.DS_DIR / ck.DS_TAG / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"x" * 10)
    (d / ck.DS_DIR / ck.DS_TAG / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10)
    if adapter is not None:
        import shutil

        shutil.copytree(adapter, d / ck.ADAPTER_DIR)
    state = {"format": ck.FORMAT, "step": step, "epoch": 0, "epoch_batches": step, "tokens_seen": 0, "restarts": 0,
             "metrics": metrics or {}, "world_size": world, "zero_stage": zero, "precision": precision,
             "fingerprint": FP}
    (d / ck.STATE_FILE).write_text(json.dumps(state))
    return d


@pytest.fixture(scope="module")
def adapter(stored_model, tmp_path_factory):
    """A real PEFT adapter of the real model, saved the way checkpoints save it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import torch

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(stored_model.path),
                           LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    return out


def test_missing_and_garbled_state_files(tmp_path):
    with pytest.raises(ck.CheckpointError, match="trainer_state.json is missing"):
        ck.read_state(tmp_path)
    (tmp_path / ck.STATE_FILE).write_text("{not json")
    with pytest.raises(ck.CheckpointError, match="is corrupt: trainer_state.json is unreadable"):
        ck.read_state(tmp_path)
    (tmp_path / ck.STATE_FILE).write_text(json.dumps({"format": 1, "step": 3}))
    with pytest.raises(ck.CheckpointError, match="lacks"):
        ck.read_state(tmp_path)


def test_adapter_checks(tmp_path, adapter):
    d = make_ckpt(tmp_path, 5, adapter=adapter)
    ck.check_adapter(d)
    weights = d / ck.ADAPTER_DIR / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a crash mid-copy
    with pytest.raises(ck.CheckpointError, match="adapter_model.safetensors cannot be read"):
        ck.check_adapter(d)
    weights.unlink()
    with pytest.raises(ck.CheckpointError, match="adapter_model.safetensors is missing"):
        ck.check_adapter(d)


def test_compatibility_names_every_difference(tmp_path):
    d = make_ckpt(tmp_path, 5)
    state = ck.read_state(d)
    ck.check_compatible(d, state, FP, 2, 2, "bf16", weights_only=False)
    other = json.loads(json.dumps(FP))
    other["lora"]["r"] = 8
    with pytest.raises(ck.CheckpointError) as err:
        ck.check_compatible(d, state, other, 2, 2, "bf16", weights_only=True)
    assert "lora.r: 16 in the checkpoint, 8 now" in str(err.value)
    with pytest.raises(ck.CheckpointError) as err:
        ck.check_compatible(d, state, FP, 1, 3, "bf16", weights_only=False)
    msg = str(err.value)
    assert "world_size: 2 in the checkpoint, 1 now" in msg and "zero_stage: 2 in the checkpoint, 3 now" in msg
    assert "init_weights_only=true" in msg
    ck.check_compatible(d, state, FP, 1, 3, "fp32", weights_only=True)  # the adapter alone still fits


def test_deepspeed_files_per_rank(tmp_path):
    d = make_ckpt(tmp_path, 5, world=2)
    ck.check_deepspeed_files(d, 2, 2)
    (d / ck.DS_DIR / ck.DS_TAG / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(ck.CheckpointError, match="1 optimizer partition file"):
        ck.check_deepspeed_files(d, 2, 2)


def test_names_resolve_to_folders(tmp_path):
    run = tmp_path / "myrun"
    for step, f1 in ((10, 0.4), (20, 0.6), (30, 0.5)):
        make_ckpt(run, step, {"val_token_f1": f1, "val_loss": 1 / step})
    ck.write_run(run, {"checkpoint_metric": "val_token_f1", "checkpoint_mode": "max"})
    assert ck.resolve("myrun", tmp_path).name == "step-000030"
    assert ck.resolve("myrun/latest", tmp_path).name == "step-000030"
    assert ck.resolve("myrun/best", tmp_path).name == "step-000020"
    assert ck.resolve("myrun/step-000010", tmp_path).name == "step-000010"
    assert ck.resolve(str(run / "step-000010"), tmp_path) == (run / "step-000010").resolve()
    assert ck.best_checkpoint(run, "val_loss", "min").name == "step-000030"
    with pytest.raises(ck.CheckpointError, match="has no checkpoint 'step-000040'; it has: step-000010"):
        ck.resolve("myrun/step-000040", tmp_path)
    with pytest.raises(ck.CheckpointError, match="neither a folder nor a run"):
        ck.resolve("nosuchrun", tmp_path)


def test_adapter_weights_load_into_a_fresh_model(tmp_path, adapter, stored_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from app.train.loop import LoopArgs, load_adapter_weights

    d = make_ckpt(tmp_path, 7, adapter=adapter)
    args = LoopArgs(config={}, model_path=str(stored_model.path), fingerprint=FP, val_generation=[], run_name="x")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(stored_model.path),
                           LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    assert load_adapter_weights(model, d, args) == 7
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    key = next(k for k in saved if "layers.3.self_attn.v_proj.lora_B" in k)
    loaded = dict(model.named_parameters())[key.replace(".weight", ".default.weight")]
    assert torch.equal(loaded, saved[key]) and loaded.abs().sum() > 0  # B starts at zero; these are the saved ones
    other = json.loads(json.dumps(FP))
    other["lora"]["r"] = 8
    with pytest.raises(ck.CheckpointError, match="lora.r: 16 in the checkpoint, 8 now"):
        load_adapter_weights(model, d, args.model_copy(update={"fingerprint": other}))
