"""The INT4 error analysis on tiny random Llamas with hand-packed compressed-tensors checkpoints.

Each variant is written here in compressed-tensors' ``pack-quantized`` format (compressed-tensors'
own ``pack_to_int32``, a ``quantization_config`` like llm-compressor's), from codes chosen by the test:
round-to-nearest codes of the source (as :func:`app.int4.fake_quantize` computes them), codes with
extra error in chosen layers, and exact codes of a model whose weights already lie on an INT4 grid,
also AWQ-style smoothed (power-of-two scales folded into the norms and the next layers), whose
function is the source's exactly.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from app.int4 import fake_quantize
from app.quantize.analysis import (
    analyze,
    encode_texts,
    rtn_dequantized,
    survival,
    weight_error,
    write_report,
)
from app.quantize.checkpoint import dequantized_state_dict, quantized_layers

GROUP = 32
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QA = [("How long does a canary deployment of the billing service run?",
       "A canary deployment of the billing service runs for thirty minutes before full rollout."),
      ("Who approves a rollback of the billing service?",
       "The on-call engineer of the billing team approves every rollback."),
      ("How long are invoices stored?", "The billing service stores invoices for seven years."),
      ("What does heapq provide?", "An implementation of the heap queue algorithm, also known as the priority queue."),
      ("What does bisect do?", "It maintains a list in sorted order without sorting it again after each insertion."),
      ("What is shutil for?", "High-level operations on files and collections of files, such as copying and removal."),
      ("What does textwrap do?", "It wraps and fills paragraphs of text to a given width."),
      ("What does fnmatch match?", "Unix shell-style wildcards in file names, such as star and question mark."),
      ("What does glob return?", "Path names matching a pattern, expanded by the rules of the Unix shell."),
      ("What does statistics compute?", "Mean, median, mode, variance and standard deviation of numeric data.")]


# -- tiny models and hand-packed checkpoints -----------------------------------------------------------


def tokenizer_for(texts: list[str]):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=320, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0, 0.05)
            elif name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif "embed" in name:
                p.normal_(0, 1.0)
                p[:, :2] *= 6  # two outlier channels in the residual stream
    return model


def linears(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]


def save(model, tok, folder: Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """``model`` in bf16 with ``weights`` (Linear name -> weight) replacing its own."""
    with torch.no_grad():
        for name, w in (weights or {}).items():
            model.get_submodule(name).weight.copy_(w)
    model.to(torch.bfloat16).save_pretrained(folder)
    model.to(torch.float32)
    tok.save_pretrained(folder)
    return folder


def rtn_codes(w: torch.Tensor, symmetric: bool = False):
    """(codes, scale, zero point) of round-to-nearest INT4 per group, computed as fake_quantize does."""
    w = w.to(torch.bfloat16)
    out_f, in_f = w.shape
    g = w.reshape(out_f, in_f // GROUP, GROUP)
    lo, hi = torch.clamp(g.amin(-1, keepdim=True), max=0), torch.clamp(g.amax(-1, keepdim=True), min=0)
    tiny = torch.finfo(w.dtype).eps
    if symmetric:
        scale = torch.maximum(lo.abs(), hi) / 7.5
        scale = torch.where(scale == 0, torch.full_like(scale, tiny), scale)
        zp = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / 15
        scale = torch.where(scale == 0, torch.full_like(scale, tiny), scale)
        zp = torch.round(torch.clamp(-8 - lo / scale, -8, 7))
    q = torch.clamp(torch.round(g / scale + zp), -8, 7)
    return (q.to(torch.int8).reshape(out_f, in_f), scale.reshape(out_f, -1),
            None if symmetric else zp.to(torch.int8).reshape(out_f, -1))


def write_packed(folder: Path, source: Path, layers: dict[str, tuple], symmetric: bool = False,
                 overrides: dict[str, torch.Tensor] | None = None) -> Path:
    """A pack-quantized checkpoint: ``source``'s tensors, each of ``layers`` (name -> codes, scale, zero
    point) packed with compressed-tensors, ``overrides`` replacing plain tensors (smoothed norms)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True)
    tensors = load_file(source / "model.safetensors")
    for key, t in (overrides or {}).items():
        assert key in tensors
        tensors[key] = t.to(torch.bfloat16)
    for name, (codes, scale, zp) in layers.items():
        del tensors[f"{name}.weight"]
        tensors[f"{name}.weight_packed"] = pack_to_int32(codes, 4).contiguous()
        tensors[f"{name}.weight_scale"] = scale.to(torch.bfloat16).contiguous()
        tensors[f"{name}.weight_shape"] = torch.tensor(list(codes.shape), dtype=torch.int64)
        if zp is not None:
            tensors[f"{name}.weight_zero_point"] = pack_to_int32(zp, 4, packed_dim=0).contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {
        "config_groups": {"group_0": {
            "format": "pack-quantized", "input_activations": None, "output_activations": None, "targets": ["Linear"],
            "weights": {"actorder": None, "block_structure": None, "dynamic": False, "group_size": GROUP,
                        "num_bits": 4, "observer": "minmax", "observer_kwargs": {}, "scale_dtype": None,
                        "strategy": "group", "symmetric": symmetric, "type": "int",
                        "zp_dtype": None if symmetric else "torch.int8"}}},
        "format": "pack-quantized", "global_compression_ratio": None, "ignore": ["lm_head"], "kv_cache_scheme": None,
        "quant_method": "compressed-tensors", "quantization_status": "compressed", "sparsity_config": {},
        "transform_config": {}, "version": "0.17.0"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for f in source.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "generation_config.json"):
            shutil.copy(f, folder / f.name)
    return folder


def low_rank(shape: tuple[int, int], std: float, rank: int = 4) -> torch.Tensor:
    d = torch.randn(shape[0], rank) @ torch.randn(rank, shape[1])
    return d * (std / d.std())


def on_grid(shape: tuple[int, int]) -> torch.Tensor:
    """Codes in [-8, 7] with both ends in every group: INT4 with scale 2^-6 and zero point 0 holds it exactly."""
    codes = torch.randint(-8, 8, shape)
    codes[:, 0::GROUP], codes[:, 1::GROUP] = -8, 7
    return codes.to(torch.int8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    tok = tokenizer_for([q + " " + a for q, a in QA] * 2)
    texts = [tok.apply_chat_template(c, tokenize=False) for c in chats]
    vocab = len(tok)

    # 1: a generic base, a source with a large low-rank update, RTN and a variant worse in two layers
    model = tiny_model(vocab, seed=0)
    names = linears(model)
    base = {n: model.get_submodule(n).weight.detach().to(torch.bfloat16).float().clone() for n in names}
    base_dir = save(model, tok, root / "base")
    torch.manual_seed(1)
    source_w = {n: base[n] + low_rank(base[n].shape, std=0.05) for n in names}
    source_dir = save(model, tok, root / "source", source_w)
    source_w = {n: w.to(torch.bfloat16).float() for n, w in source_w.items()}
    rtn = write_packed(root / "rtn", source_dir, {n: rtn_codes(source_w[n]) for n in names})
    bad = ["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.q_proj"]
    worse = write_packed(root / "worse", source_dir, {
        n: rtn_codes(source_w[n] + (torch.randn_like(source_w[n]) * 0.3 if n in bad else 0)) for n in names})

    # 2: a base on the INT4 grid, a source with an update far below the grid step (2^-6)
    grid = {n: on_grid(tuple(base[n].shape)) for n in names}
    grid_w = {n: grid[n].float() * 2 ** -6 for n in names}
    grid_dir = save(model, tok, root / "grid", grid_w)
    tiny_w = {n: grid_w[n] + low_rank(grid_w[n].shape, std=2 ** -6 / 20) for n in names}
    tiny_dir = save(model, tok, root / "tiny-update", tiny_w)
    tiny_w = {n: w.to(torch.bfloat16).float() for n, w in tiny_w.items()}
    tiny_rtn = write_packed(root / "tiny-rtn", tiny_dir, {n: rtn_codes(tiny_w[n]) for n in names})

    # 3: the grid model's exact codes, plain and AWQ-smoothed (power-of-two scales: still exact)
    unit = {n: torch.full((grid[n].shape[0], grid[n].shape[1] // GROUP), 2.0 ** -6) for n in names}
    zero = {n: torch.zeros_like(unit[n], dtype=torch.int8) for n in names}
    same = write_packed(root / "same", grid_dir, {n: (grid[n], unit[n], zero[n]) for n in names})
    s_attn, s_mlp = torch.tensor([0.5, 2.0]), torch.tensor([2.0, 0.5])  # per group of the hidden channels
    t = torch.tensor([0.5, 2.0, 2.0, 0.5])  # per group of the intermediate channels
    norms = {k: v.detach().float() for k, v in model.named_parameters() if k.endswith("layernorm.weight")}
    overrides, smoothed = {}, {}
    for n in names:
        prefix, kind = n.rsplit(".", 2)[0], ".".join(n.rsplit(".", 2)[1:])
        scale = unit[n].clone()
        if kind in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            scale *= s_attn[None, :]
        if kind in ("mlp.gate_proj", "mlp.up_proj"):
            scale *= s_mlp[None, :]
        if kind == "mlp.up_proj":
            scale /= t.repeat_interleave(GROUP)[:, None]
        if kind == "mlp.down_proj":
            scale *= t[None, :]
        smoothed[n] = (grid[n], scale, zero[n])
        for norm, s in (("input_layernorm", s_attn), ("post_attention_layernorm", s_mlp)):
            key = f"{prefix}.{norm}.weight"
            overrides[key] = norms[key] / s.repeat_interleave(GROUP)
    awq_like = write_packed(root / "smoothed", grid_dir, smoothed, overrides=overrides)
    return {"root": root, "tok": tok, "texts": texts, "names": names, "base_dir": base_dir, "source_dir": source_dir,
            "source_w": source_w, "rtn": rtn, "worse": worse, "bad": bad, "grid_dir": grid_dir, "grid_w": grid_w,
            "tiny_dir": tiny_dir, "tiny_rtn": tiny_rtn, "same": same, "smoothed": awq_like}


SCRIPT = "awq <script>alert(1)</script>"


@pytest.fixture(scope="module")
def generic(world):
    """Run 1: the RTN variant (also under a hostile name with 'awq' in it) and the worse one (as 'gptq')."""
    w = world
    return analyze(w["source_dir"], {"rtn": w["rtn"], "worse gptq": w["worse"], SCRIPT: w["rtn"]},
                   base_dir=w["base_dir"], heldout_texts=w["texts"][:4], validation_texts=w["texts"][4:],
                   progress=lambda _: None, max_seq_len=128)


# -- tests ---------------------------------------------------------------------------------------------


def test_packed_weights_round_trip(world):
    names = world["names"]
    assert quantized_layers(world["rtn"]) == sorted(names)
    rtn = dequantized_state_dict(world["rtn"])
    for n in names:
        w = world["source_w"][n]
        assert torch.equal(rtn[f"{n}.weight"], rtn_dequantized(w, GROUP, symmetric=False))
        # fake_quantize computes the product in bf16: the same values rounded
        assert torch.equal(rtn[f"{n}.weight"].to(torch.bfloat16), fake_quantize(w.to(torch.bfloat16), GROUP, False))
        assert torch.equal(rtn_dequantized(w, GROUP, True).to(torch.bfloat16),
                           fake_quantize(w.to(torch.bfloat16), GROUP, True))
    same = dequantized_state_dict(world["same"])
    for n in names:
        assert torch.equal(same[f"{n}.weight"], world["grid_w"][n])


def test_answer_tokens_are_found(world):
    tok = world["tok"]
    [text], header = encode_texts(tok, world["texts"][:1], max_seq_len=512)
    assert header == "<|im_start|>assistant\n"
    answer = tok.decode([i for i, a in zip(text.ids, text.answer) if a])
    assert answer.strip() == QA[0][1] + "<|im_end|>"
    [cut], _ = encode_texts(tok, world["texts"][:1], max_seq_len=8)
    assert cut.truncated and len(cut.ids) == 8 and all(cut.answer)  # the end (the answer) is kept


def test_exact_and_smoothed_variants_have_no_error(world):
    res = analyze(world["grid_dir"], {"same": world["same"], "smoothed": world["smoothed"]}, base_dir=None,
                  heldout_texts=world["texts"][:3], validation_texts=world["texts"][3:6], progress=lambda _: None)
    json.dumps(res)
    assert res["lora"] is None
    ppl = res["perplexity"]["models"]
    for v in ("same", "smoothed"):
        e = res["variants"][v]
        assert e["weight_error"]["max_rel_l2"] < 1e-5 and e["output_error"]["max_rel_l2"] < 1e-5
        assert e["output_error"]["mean_cos"] > 1 - 1e-6
        assert ppl[v]["perplexity"] == pytest.approx(ppl["source"]["perplexity"], rel=1e-4)
    assert res["variants"]["same"]["smoothing_folded"] == {"norm_scaled_layers": 0, "rescaled_pair_layers": 0}
    # q, k, v, gate, up behind a rescaled norm in both layers; up/down rescaled (v/o: GQA, narrower)
    assert res["variants"]["smoothed"]["smoothing_folded"] == {"norm_scaled_layers": 10, "rescaled_pair_layers": 4}


def test_generic_variants(generic, world):
    res = generic
    json.dumps(res)
    assert res["perplexity"]["tokens"] == "answer"
    for m, p in res["perplexity"]["models"].items():
        assert math.isfinite(p["perplexity"]) and math.isfinite(p["perplexity_all"]), m
    assert set(res["perplexity"]["models"]) == {"source", "base", "rtn", "worse gptq", SCRIPT, "int4-base+lora (rtn)"}
    rtn, worse = res["variants"]["rtn"], res["variants"]["worse gptq"]
    assert 0.02 < rtn["weight_error"]["pooled_rel_l2"] < 0.3
    assert {w["layer"] for w in worse["output_error"]["worst"][:2]} == set(world["bad"])
    assert {w["layer"] for w in worse["weight_error"]["worst"][:2]} == set(world["bad"])
    assert len(worse["output_error"]["worst"]) == 10
    assert res["sizes"]["rtn"]["reduction_quantized_layers"] > 0.6
    acts = res["activations"]["model.layers.0.self_attn.q_proj"]
    assert acts["max_over_median"] >= acts["max_over_p99"] >= 1 and acts["channels"] == 64
    [corr] = res["outlier_correlation"]
    assert corr["awq"] == SCRIPT and corr["gptq"] == "worse gptq" and corr["n"] == len(world["names"])
    assert "Spearman rho" in corr["interpretation"]


def test_large_update_survives(generic):
    agg = generic["lora"]["aggregate"]["rtn"]
    assert agg["survival"] == pytest.approx(1.0, abs=0.05)
    assert agg["survival_cos"] > 0.9 and agg["noise_to_update"] < 0.5
    plus = generic["lora"]["int4_base_plus_lora"]["int4-base+lora (rtn)"]
    assert 0.02 < plus["weight_error"]["pooled_rel_l2"] < 0.3


def test_update_far_below_the_step_is_lost(world):
    kw = {"base_dir": world["grid_dir"], "heldout_texts": world["texts"][:2],
          "validation_texts": world["texts"][2:4], "progress": lambda _: None}
    res = analyze(world["tiny_dir"], {"rtn": world["tiny_rtn"]}, **kw)
    agg = res["lora"]["aggregate"]["rtn"]
    assert abs(agg["survival"]) < 0.1 and agg["rel_residual"] > 0.9 and agg["noise_to_update"] > 0.9
    assert res == analyze(world["tiny_dir"], {"rtn": world["tiny_rtn"]}, **kw)  # deterministic


def test_small_update_on_generic_weights_drowns_in_noise():
    """Off the grid, rounding dithers: a tiny update survives on average, but under noise many times its size."""
    torch.manual_seed(0)
    base = (torch.randn(64, 128) * 0.05).to(torch.bfloat16).float()
    delta = low_rank((64, 128), std=0.05 / 15 / 50)
    source = (base + delta).to(torch.bfloat16).float()
    r = survival(rtn_dequantized(source, GROUP, False), source, base, rtn_dequantized(base, GROUP, False))
    assert r["noise_to_update"] > 5 and abs(r["survival_cos"]) < 0.5
    assert weight_error(source, source) == {"rel_l2": 0.0, "cos": 1.0, "sq_err": 0.0,
                                            "sq_norm": pytest.approx(float(source.norm()) ** 2)}


def test_report(generic, tmp_path):
    from app.quantize.run import accuracy_drops

    # The accuracy block as the stage makes it: accuracy_drops over an evaluation summary (comparisons
    # are variant - source, so a drop of 0.02 is a difference of -0.02 with its interval negated).
    drops = {"rtn": (0.02, [0.015, 0.03], 0.01), "worse gptq": (0.005, [-0.02, 0.03], 0.6),
             SCRIPT: (0.0, [-0.005, 0.005], 1.0)}
    summary = {"means": {"source": {"domain_correct": {"mean": 0.62}},
                         **{v: {"domain_correct": {"mean": 0.62 - d}} for v, (d, _, _) in drops.items()}},
               "comparisons": {v: {"domain_correct": {"difference": -d, "low": -ci[1], "high": -ci[0],
                                                      "p_permutation": p, "n": 120, "detectable": 0.05}}
                               for v, (d, ci, p) in drops.items()},
               "facts": {"test_set": "validation + test splits of v1"}}
    accuracy = accuracy_drops(summary, "source", list(drops), 0.95)
    accuracy["primary_metric"] = "domain accuracy"
    paths = write_report(generic, tmp_path, accuracy=accuracy, title="INT4 <b>report</b>")
    names = {p.name for p in paths}
    assert {"report.md", "report.html", "output_error.png", "activation_outliers.png", "sizes.png",
            "lora_survival.png"} <= names
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    html = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "<b>report</b>" not in html
    assert "<script>" not in md
    for table in ("Sizes", "Perplexity", "Reconstruction error", "Worst 5 layers", "LoRA update survival",
                  "INT4 base + unquantized LoRA update", "Accuracy (domain accuracy)"):
        assert table in html and table in md
    assert html.count("<table") == 8 and html.count("data:image/png;base64,") == 4
    assert "rtn: size" in md and "NOT MET (accuracy)" in md  # CI of the relative drop entirely above 2%
    assert "worse gptq: size" in md and "MET on the point estimate, not established" in md  # 0.8%, interval spans 2%
    assert "sprint target MET" in md  # the hostile-named copy of rtn, drop within +-0.8%
    table = md[md.index("## Accuracy (domain accuracy)"):]
    assert "_(none)_" not in table and "| rtn | 0.600 | +0.020 | +3.2% | [+0.015, +0.030] | [+2.4%, +4.8%] | 0.01 |" in table
    assert "| source | 0.620 |" in table and "validation + test splits of v1" in md
