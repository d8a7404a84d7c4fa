"""vLLM (offline engine) vs Hugging Face transformers `generate` on the same prompts and model.

    .venv/bin/python benchmarks/vllm_vs_hf.py -c configs/local.yaml --rounds 2

Both run greedy with a fixed output length (vLLM: ignore_eos; HF: min_new_tokens) in the serving
section's dtype (bfloat16 by default), on this machine, in one session, rounds interleaved. vLLM gets
the serving section's engine arguments (the path the endpoint serves: eager, PyTorch kernels on CPU)
and all prompts at once; HF runs at each batch size in --hf-batches and the best one is the baseline.
Prints output tokens per second per round, the medians and the speed-up against the best HF batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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


def vllm_engine(model_dir, serving):
    from vllm import LLM

    from app.serving.builder import engine_args, engine_env, threads_binds

    os.environ.update(engine_env(serving, threads_binds(serving)[0]))
    return LLM(model=str(model_dir), **engine_args(serving))


def vllm_run(llm, prompts, max_tokens):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    msgs = [[{"role": "user", "content": p}] for p in prompts]
    llm.chat(msgs[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.chat(msgs, params, use_tqdm=False)
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    return produced / (time.perf_counter() - start)


def main() -> None:
    from app.config import load_config
    from app.serving.builder import engine_args
    from app.serving.loadgen import benchmark_prompts
    from app.model_store import model_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default=None)
    ap.add_argument("--set", "-s", action="append", default=[], help="config overrides, e.g. serving.dtype=float32")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hf-batches", default="1,8,32", help="HF batch sizes to measure")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    model_dir = model_store(cfg).resolve(cfg.model).path
    prompts = benchmark_prompts(args.prompts)
    dtype = cfg.serving.dtype
    batches = [int(x) for x in args.hf_batches.split(",")]
    llm = vllm_engine(model_dir, cfg.serving)
    rounds: dict[str, list[float]] = {"vllm": [], **{f"hf_batch{b}": [] for b in batches}}
    for r in range(args.rounds):
        rounds["vllm"].append(vllm_run(llm, prompts, args.max_tokens))
        for b in batches:
            rounds[f"hf_batch{b}"].append(hf_run(model_dir, prompts, args.max_tokens, b, dtype))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in rounds.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    best = max((k for k in med if k.startswith("hf_")), key=med.get)
    ratios = [v / h for v, h in zip(rounds["vllm"], rounds[best])]
    result = {"model": cfg.model.name, "prompts": len(prompts), "max_tokens": args.max_tokens, "dtype": dtype,
              "engine": {k: v for k, v in engine_args(cfg.serving).items()}, "rounds": rounds,
              "median_tok_s": med, "best_hf": best, "speedup_vs_best_hf": med["vllm"] / med[best],
              "speedup_per_round": ratios, "speedup_vs_hf_batch1": med["vllm"] / med.get("hf_batch1", float("nan"))}
    print(json.dumps(result, indent=2, default=lambda x: round(x, 2)))
    # Without this the interpreter waits at exit for the engine's processes, which do not end by themselves.
    llm.llm_engine.engine_core.shutdown()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
