"""LoRA training throughput, MFU and peak memory on one GPU, Llama-3-8B shape: ours vs plain transformers + PEFT.

    python benchmarks/train_gpu.py                      # both paths, sequence 2048, random weights
    python benchmarks/train_gpu.py --answer-frac 1.0    # every token scored: the loss path's overhead alone

Needs only torch (CUDA), transformers and peft (the GPU machine has no Ray or DeepSpeed): it times
the per-step work that the project's worker loop does on each GPU, not the Ray/DeepSpeed plumbing.

Model: Llama-3-8B's shape (32 layers, hidden 4096, MLP 14336, 32/8 heads, vocabulary 128256) with
random bf16 weights, LoRA r=16 on q/k/v/o/gate/up/down, SDPA attention, AdamW on the adapter,
fixed-length sequences of random tokens. Cases, each measured after warm-up in this one process:

  baseline       model(input_ids, labels=input_ids): HF's loss over every position (the brief's
                 reference: 6,932 tok/s at micro-batch 1, 5,763 at 2 with checkpointing, H100 80GB)
  ours           app.train.batching.causal_lm_loss: labels only on the answer (the last
                 --answer-frac of each sequence, as in the QA examples: a context and a question
                 before a short answer); logits are computed at those positions only, so the
                 128k-vocabulary projection and its fp32 softmax run on a fraction of the tokens.

MFU counts 4N + attention FLOPs per token (forward 2N, backward input gradients 2N; the frozen base
has no weight gradients) with N the matmul parameters incl. the full-vocabulary head, the same
count for both paths: MFU ratios equal throughput ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8)
TINY = dict(vocab_size=32000, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)


def build(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = TINY if args.tiny else LLAMA3_8B
    config = LlamaConfig(**shape, num_hidden_layers=args.layers, max_position_embeddings=8192, rope_theta=500000.0,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    return model, config


def flops_per_token(config, seq: int) -> float:
    h, L = config.hidden_size, config.num_hidden_layers
    kv = h * config.num_key_value_heads // config.num_attention_heads
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * config.intermediate_size
    n = L * per_layer + h * config.vocab_size
    attention = 2 * 2 * L * seq * h  # QK^T and AV, forward, causal average ignored (upper bound)
    return 2 * (2 * n + attention)


def run_case(model, config, case: str, micro_batch: int, seq: int, steps: int, warmup: int, checkpointing: bool,
             answer_frac: float, device: str) -> dict:
    import resource

    import torch

    from app.train.batching import IGNORE_INDEX, causal_lm_loss

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    else:
        model.gradient_checkpointing_disable()
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator(device=device).manual_seed(1)
    times = []
    for step in range(warmup + steps):
        ids = torch.randint(0, config.vocab_size, (micro_batch, seq), device=device, generator=gen)
        sync()
        t = time.perf_counter()
        if case == "baseline":
            loss = model(input_ids=ids, labels=ids).loss
        else:
            labels = ids.clone()
            labels[:, : int(seq * (1 - answer_frac))] = IGNORE_INDEX
            loss, _ = causal_lm_loss(model, {"input_ids": ids, "labels": labels})
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - t)
    tok_s = micro_batch * seq * steps / sum(times)
    return {"case": case, "micro_batch": micro_batch, "checkpointing": checkpointing, "tokens_per_s": tok_s,
            "peak_gib": (torch.cuda.max_memory_allocated() if cuda else
                         resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=32, help="fewer for a quick look (not comparable)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--answer-frac", type=float, default=0.1,
                        help="share of each sequence that is answer (scored); the default dataset here: 0.064")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script with --tiny")
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama shape: checks the script runs, figures "
                        "mean nothing")
    args = parser.parse_args()

    import torch

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    model, config = build(args)
    fpt = flops_per_token(config, args.seq)
    cases = [("baseline", 1, False), ("baseline", 2, True), ("ours", 1, False), ("ours", 2, False),
             ("ours", 2, True), ("ours", 4, True)]
    results = []
    for case, mb, gc in cases:
        try:
            r = run_case(model, config, case, mb, args.seq, args.steps, args.warmup, gc, args.answer_frac, args.device)
        except torch.OutOfMemoryError:
            r = {"case": case, "micro_batch": mb, "checkpointing": gc, "tokens_per_s": None, "peak_gib": None,
                 "error": "out of memory"}
            if args.device == "cuda":
                torch.cuda.empty_cache()
        if r["tokens_per_s"]:
            r["mfu"] = r["tokens_per_s"] * fpt / (peak * 1e12) if peak else None
        results.append(r)
        print(json.dumps(r), flush=True)
    base = max((r["tokens_per_s"] or 0) for r in results if r["case"] == "baseline")
    print(f"\n{name}, {'TINY (smoke test)' if args.tiny else 'Llama-3-8B'} shape ({args.layers} layers), "
          f"seq {args.seq}, LoRA r=16 x 7, bf16, "
          f"answer share {args.answer_frac}; ratio vs the best baseline row")
    print(f"{'case':<9} {'mb':>3} {'ckpt':>5} {'tok/s':>8} {'ratio':>6} {'MFU':>6} {'peak GiB':>9}")
    for r in results:
        if r["tokens_per_s"] is None:
            print(f"{r['case']:<9} {r['micro_batch']:>3} {str(r['checkpointing']):>5}  out of memory")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        print(f"{r['case']:<9} {r['micro_batch']:>3} {str(r['checkpointing']):>5} {r['tokens_per_s']:>8.0f} "
              f"{r['tokens_per_s'] / base:>6.2f} {mfu:>6} {r['peak_gib']:>9.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
