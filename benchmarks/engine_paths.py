"""vLLM CPU engine paths side by side: dtype x eager/compiled x custom ops, each checked by the gate.

    .venv/bin/python benchmarks/engine_paths.py -c configs/local.yaml                 # every path, 1 round
    .venv/bin/python benchmarks/engine_paths.py --paths bf16-eager-native,fp32-eager --rounds 2

Each path runs in its own process (an offline ``vllm.LLM``, OpenMP bound to this machine's cores,
2 GiB KV cache), one after the other, rounds interleaved (A B C A B C). Per path it measures:
- init_s: ``LLM(...)`` construction to ready (weights, KV cache, compilation or not);
- the correctness gate: greedy chat answers to the gate prompts (all at once, as a batch) against
  the model's float32 Hugging Face reference (app.serving.gate);
- batch throughput: 32 chat prompts x 64 new tokens (ignore_eos), output tok/s, after a warm-up;
- single-stream decode: one prompt, 128 new tokens, decode tok/s from the second token on.
It also measures this machine's memory read bandwidth with the same thread count and prints the
decode bound it sets: bandwidth / bytes of weights read per token. Prints a table and writes JSON
to <home>/reports/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> engine arguments. "native" = vLLM's own CPU C++ kernels for RMSNorm, rotary embedding and
# SiLU-and-mul switched off (custom_ops: none), so PyTorch's implementations run instead. Compiled
# paths need no such variant: under torch.compile vLLM already defaults to custom_ops none.
PATHS: dict[str, dict] = {
    "fp32-eager": {"dtype": "float32", "enforce_eager": True},
    "fp32-compiled": {"dtype": "float32"},
    "bf16-eager": {"dtype": "bfloat16", "enforce_eager": True},
    "bf16-compiled": {"dtype": "bfloat16"},
    "bf16-eager-native": {"dtype": "bfloat16", "enforce_eager": True, "compilation_config": {"custom_ops": ["none"]}},
}


def child(spec: dict) -> dict:
    """Runs inside the path's own process."""
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(spec["kv_cache_gib"])
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = spec["threads_bind"]
    from vllm import LLM, SamplingParams

    from app.serving.loadgen import benchmark_prompts

    started = time.perf_counter()
    llm = LLM(model=spec["model_dir"], max_model_len=2048, seed=0, **spec["engine"])
    init_s = time.perf_counter() - started
    greedy = SamplingParams(temperature=0, max_tokens=spec["gate_tokens"])
    gate_out = llm.chat([[{"role": "user", "content": p}] for p in spec["gate_prompts"]], greedy, use_tqdm=False)
    answers = [o.outputs[0].text.strip() for o in gate_out]

    msgs = [[{"role": "user", "content": p}] for p in benchmark_prompts(spec["prompts"], seed=0)]
    fixed = SamplingParams(temperature=0, max_tokens=spec["max_tokens"], ignore_eos=True)
    llm.chat(msgs[:4], fixed, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.chat(msgs, fixed, use_tqdm=False)
    batch_s = time.perf_counter() - t0
    produced = sum(len(o.outputs[0].token_ids) for o in outs)

    one = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    t0 = time.perf_counter()
    llm.chat(msgs[:1], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm.chat(msgs[:1], one, use_tqdm=False)
    single_s = time.perf_counter() - t0
    return {"init_s": init_s, "answers": answers, "batch_tok_s": produced / batch_s,
            "single_stream_decode_tok_s": 127 / max(single_s - ttft, 1e-9), "single_ttft_s": ttft}


def memory_bandwidth_gb_s(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth: sum over a buffer far larger than the caches, best of ``repeats``."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def weight_bytes_per_token(model_dir: Path, dtype_bytes: int) -> int:
    """Bytes of weights one decode step reads: every parameter once (a tied embedding is read once,
    by the output projection; the input lookup reads one row)."""
    from safetensors import safe_open

    n = 0
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for key in f.keys():
            n += _numel(f.get_slice(key).get_shape())
    return n * dtype_bytes


def _numel(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def main() -> None:
    from app.config import load_config
    from app.model_store import ModelStore
    from app.serving import gate
    from app.serving.builder import split_cores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default=None)
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from: {', '.join(PATHS)}")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return

    cfg = load_config(args.config)
    store = ModelStore(cfg.paths.resolved_home() / "models")
    stored = store.resolve(cfg.model)
    g = cfg.serving.gate
    reference = gate.load_reference(store, stored, g.max_new_tokens)
    thresholds = gate.Thresholds(g.min_similarity, g.min_agreeing)
    names = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        sys.exit(f"unknown paths {unknown}; known: {', '.join(PATHS)}")
    threads_bind = split_cores(1, os.cpu_count() or 1)[0]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rnd in range(args.rounds):
        for name in names:
            spec = {"model_dir": str(stored.path), "engine": PATHS[name], "kv_cache_gib": 2,
                    "threads_bind": threads_bind, "gate_prompts": reference["prompts"],
                    "gate_tokens": g.max_new_tokens, "prompts": args.prompts, "max_tokens": args.max_tokens}
            print(f"[round {rnd + 1}] {name}: {PATHS[name]}", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, timeout=1800, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"  failed (exit {proc.returncode}): {proc.stderr[-800:]}", flush=True)
                runs[name].append({"error": proc.stderr[-2000:]})
                continue
            r = json.loads(line[len("RESULT "):])
            verdict = gate.judge(name, r["answers"], reference, thresholds)
            r["gate"] = {"passed": verdict.passed, "agreeing": verdict.agreeing, "total": verdict.total,
                         "mean_similarity": verdict.mean_similarity,
                         "similarities": [row["similarity"] for row in verdict.rows]}
            runs[name].append(r)
            print(f"  init {r['init_s']:.1f} s, batch {r['batch_tok_s']:.1f} tok/s, single-stream decode "
                  f"{r['single_stream_decode_tok_s']:.1f} tok/s, gate {verdict.agreeing}/{verdict.total} "
                  f"(mean {verdict.mean_similarity:.2f}) {'PASS' if verdict.passed else 'FAIL'}; "
                  f"France -> {r['answers'][0][:60]!r}", flush=True)

    threads = len(range(int(threads_bind.split("-")[0]), int(threads_bind.split("-")[-1]) + 1))
    bw = memory_bandwidth_gb_s(threads)
    rows = []
    for name in names:
        ok = [r for r in runs[name] if "error" not in r]
        if not ok:
            rows.append({"path": name, "error": True})
            continue
        dtype_bytes = 4 if PATHS[name]["dtype"] == "float32" else 2
        bound = bw * 1e9 / weight_bytes_per_token(stored.path, dtype_bytes)

        def stat(key):
            vals = [r[key] for r in ok]
            return round(statistics.median(vals), 1), round(min(vals), 1), round(max(vals), 1)

        single = stat("single_stream_decode_tok_s")
        rows.append({"path": name, "engine": PATHS[name], "rounds": len(ok),
                     "gate_passed": all(r["gate"]["passed"] for r in ok),
                     "gate_agreeing": [r["gate"]["agreeing"] for r in ok],
                     "gate_mean_similarity": [r["gate"]["mean_similarity"] for r in ok],
                     "init_s": stat("init_s"), "batch_tok_s": stat("batch_tok_s"), "single_decode_tok_s": single,
                     "decode_bound_tok_s": round(bound, 1), "share_of_bound": round(single[0] / bound, 3),
                     "france": ok[0]["answers"][0][:60]})
    print(f"\nmemory read bandwidth ({threads} threads): {bw:.1f} GB/s; {args.prompts} chats x {args.max_tokens} tokens")
    print("path | gate | init s | batch tok/s (min-max) | single-stream decode tok/s | bound tok/s | share")
    for r in rows:
        if r.get("error"):
            print(f"{r['path']} | error")
            continue
        print(f"{r['path']} | {'pass' if r['gate_passed'] else 'FAIL'} {r['gate_agreeing']} | {r['init_s'][0]} | "
              f"{r['batch_tok_s'][0]} ({r['batch_tok_s'][1]}-{r['batch_tok_s'][2]}) | {r['single_decode_tok_s'][0]} | "
              f"{r['decode_bound_tok_s']} | {r['share_of_bound']}")
    out = cfg.paths.resolved_home() / "reports" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"engine_paths-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"bandwidth_gb_s": bw, "threads": threads, "rows": rows, "runs": runs}, indent=2))
    print(f"report: {path}")


if __name__ == "__main__":
    main()
