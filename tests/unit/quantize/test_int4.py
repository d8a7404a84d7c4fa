"""INT4 arithmetic, the QAT fake quantizer against llm-compressor's packer, and the stage's checks.

The packer runs for real in the quantization environment (.venv-quant, made by scripts/bootstrap.sh)
on a tiny random Llama: the codes it stores must be the codes the QAT forward trained against.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.config import ConfigError, load_config
from app.int4 import fake_quantize, is_ignored
from app.quantize.checkpoint import (dequantized_state_dict, linear_input_widths, quantized_layers, size_report,
                                     weight_scheme)
from app.quantize.env import quant_python, run_worker
from app.quantize.run import QuantizeError, accuracy_drops, check_layers, ignored_layers
from app.train.config import QatConfig


def tiny_llama(folder: Path, hidden: int = 128, intermediate: int = 256, seed: int = 0) -> Path:
    """A 2-layer random Llama in bf16 with a word-level tokenizer: enough for the packer and PEFT."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(253)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():  # weights with a realistic spread and some outlier channels
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0, 0.05)
                p[:, :3] *= 8
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def test_fake_quantize_has_sixteen_levels_per_group_keeps_zero_and_bounds_the_error():
    torch.manual_seed(0)
    w = (torch.randn(8, 128) * 0.05).to(torch.bfloat16)
    for symmetric in (True, False):
        q = fake_quantize(w, 64, symmetric)
        assert q.dtype == w.dtype and q.shape == w.shape
        for group in q.float().reshape(8, 2, 64).reshape(-1, 64):
            assert len(torch.unique(group)) <= 16
        step = (w.float().reshape(8, 2, 64).abs().amax(-1) / 7.5).repeat_interleave(64, 1).reshape(8, 128)
        assert ((q.float() - w.float()).abs() <= step * (0.51 if symmetric else 1.01) + 1e-3).all()
    assert torch.equal(fake_quantize(torch.zeros(2, 64, dtype=torch.bfloat16), 64, False), torch.zeros(2, 64))
    with pytest.raises(ValueError, match="does not divide"):
        fake_quantize(w, 48, True)


@pytest.mark.parametrize("scheme", ["W4A16", "W4A16_ASYM"])
def test_the_qat_fake_quantizer_matches_the_packed_checkpoint_code_for_code(tiny, tmp_path, scheme):
    """llm-compressor's round-to-nearest packer (the QAT variant's) in the quantization environment
    stores exactly the INT4 codes of app.int4.fake_quantize; and vLLM-format sizes are as expected."""
    from safetensors.torch import load_file

    out = tmp_path / "rtn"
    job = {"model_dir": str(tiny), "out_dir": str(out), "method": "rtn", "scheme": scheme, "group_size": 64,
           "ignore": ["lm_head"], "calibration_file": None, "max_seq_len": 64, "pipeline": "sequential"}
    lines: list[str] = []
    result = run_worker(quant_python(None), job, timeout_s=600, progress=lines.append)
    assert result["versions"]["llmcompressor"] == "0.14.0.1" and result["versions"]["compressed_tensors"] == "0.19.0"
    scheme_read = weight_scheme(out)
    assert (scheme_read.group_size, scheme_read.symmetric, scheme_read.name) == (64, scheme == "W4A16", scheme)
    assert len(quantized_layers(out)) == 14  # 2 layers x 7 projections; lm_head ignored
    source = load_file(str(tiny / "model.safetensors"))
    packed = dequantized_state_dict(out)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for name in quantized_layers(out):
            w = source[f"{name}.weight"]
            mine = fake_quantize(w, 64, scheme == "W4A16").float()
            step = f.get_tensor(f"{name}.weight_scale").float().repeat_interleave(64, dim=1)
            assert ((mine - packed[f"{name}.weight"]).abs() < 0.5 * step).all(), name  # the same code everywhere
    sizes = size_report(out)
    assert sizes["quantized_parameters"] == sum(source[f"{n}.weight"].numel() for n in quantized_layers(out))
    assert sizes["quantized_layer_bytes"] < 0.3 * sizes["quantized_layer_bf16_bytes"]


def test_qat_forward_uses_the_fake_quantized_merged_weight_and_trains_the_adapter(tiny):
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from app.train.qat import apply_qat

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    counts = apply_qat(model, QatConfig(scheme="W4A16_ASYM", group_size=64))
    assert counts == {"lora_layers": 4, "frozen_layers": 10}
    layer = model.base_model.model.model.layers[0]
    x = torch.randn(3, 128)
    merged = layer.self_attn.q_proj.base_layer.weight + layer.self_attn.q_proj.get_delta_weight("default")
    expected = F.linear(x, fake_quantize(merged, 64, False))
    assert torch.allclose(layer.self_attn.q_proj(x), expected, atol=1e-5)
    frozen = layer.self_attn.k_proj  # no adapter: its own weight, fake-quantized
    assert torch.allclose(frozen(x), F.linear(x, fake_quantize(frozen.weight, 64, False)), atol=1e-5)

    ids = torch.randint(3, 200, (2, 16))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
    model.eval()
    with torch.no_grad():
        first = model(input_ids=ids).logits
        assert layer.self_attn.q_proj._qat_cache is not None  # generation reuses the quantized weight
        assert torch.equal(model(input_ids=ids).logits, first)
    model.train()
    model(input_ids=ids, labels=ids)
    assert layer.self_attn.q_proj._qat_cache is None  # training invalidates it


def test_group_size_ignore_list_and_scheme_are_checked_against_the_model(tiny):
    assert len(check_layers(tiny, 64, ["lm_head"])) == 14
    with pytest.raises(QuantizeError, match=r"group_size 96 does not divide .* must divide 128 \(e.g. 32, 64, 128\)"):
        check_layers(tiny, 96, ["lm_head"])
    with pytest.raises(QuantizeError, match=r"\['mlp.nothing'\] match no Linear layer"):
        check_layers(tiny, 64, ["lm_head", "mlp.nothing"])
    with pytest.raises(QuantizeError, match="leaves no Linear layer"):
        check_layers(tiny, 64, ["re:.*"])
    # A last-part entry: every layer it names, by its exact name (llm-compressor matches nothing else).
    assert ignored_layers(linear_input_widths(tiny), ["lm_head", "v_proj", "k_proj", "q_proj"]) == sorted(
        ["lm_head"] + [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkv"])
    assert len(check_layers(tiny, 64, ["lm_head", "q_proj", "k_proj", "v_proj"])) == 14 - 6
    with pytest.raises(QuantizeError, match=r"leaves v_proj of model.layers.0.self_attn in bf16 but not q_proj, "
                                            r"k_proj: vLLM serves q_proj/k_proj/v_proj as one fused layer"):
        check_layers(tiny, 64, ["lm_head", "v_proj"])
    with pytest.raises(QuantizeError, match="leaves up_proj of model.layers.1.mlp in bf16 but not gate_proj"):
        check_layers(tiny, 64, ["lm_head", "model.layers.1.mlp.up_proj"])
    assert is_ignored("model.layers.0.mlp.down_proj", ["down_proj"]) and is_ignored("lm_head", ["lm_head"])
    assert not is_ignored("model.layers.0.mlp.down_proj", ["proj"])
    for bad, msg in (("quantize.scheme=W3A16", "quantize.scheme"), ("quantize.group_size=60", "multiple of 8"),
                     ("quantize.methods=[gptq,gptq]", "listed twice"), ("quantize.methods=[hqq]", "quantize.methods"),
                     ("quantize.calibration_samples=4", "calibration_samples")):
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [bad])
    cfg = load_config(None, ["quantize.scheme=W4A16", "quantize.group_size=32"])
    assert cfg.quantize.variant_name("m-lora", "gptq") == "m-lora-gptq-w4g32"
    assert load_config(None).quantize.variant_name("m-lora", "awq") == "m-lora-awq-w4g64-asym"


def test_accuracy_drop_is_source_minus_variant_with_the_paired_interval():
    summary = {"examples": 50, "means": {"src": {"domain_correct": {"mean": 0.5}}, "v": {"domain_correct": {"mean": 0.45}}},
               "comparisons": {"v": {"domain_correct": {"difference": -0.05, "low": -0.12, "high": 0.02,
                                                        "p_permutation": 0.2, "n": 50, "detectable": 0.09}}}}
    out = accuracy_drops(summary, "src", ["v"], 0.95)
    v = out["variants"]["v"]
    assert v["drop"] == pytest.approx(0.05) and v["ci"] == pytest.approx([-0.02, 0.12])
    assert v["relative_drop"] == pytest.approx(0.10) and v["relative_ci"] == pytest.approx([-0.04, 0.24])
    assert (v["p_value"], v["n"]) == (0.2, 50)
    assert json.loads(json.dumps(out))["target"] == {"size_reduction": 0.4, "max_relative_drop": 0.02}


def test_a_missing_quantization_environment_names_the_fix(monkeypatch, tmp_path):
    from app.quantize.env import ENV_VAR, QuantEnvError, probe

    with pytest.raises(QuantEnvError, match=r"quantize.python: /nonexistent/python\) does not exist; create it with "
                                            r"`bash scripts/bootstrap.sh`"):
        quant_python("/nonexistent/python")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "none"))
    with pytest.raises(QuantEnvError, match=ENV_VAR):
        quant_python(None)
    import sys

    with pytest.raises(QuantEnvError, match="has no llm-compressor"):  # the app's own venv: no llm-compressor
        probe(Path(sys.executable))
