"""Training throughput and peak memory per worker: Ray Train + DeepSpeed at 1 and 2 workers, ZeRO 0/2/3.

    .venv/bin/python benchmarks/train_throughput.py -c configs/local.yaml            # 6 runs + baseline
    .venv/bin/python benchmarks/train_throughput.py -c configs/local.yaml --workers 2 --zero 2 --steps 20

Every run is the project's own training path (`app.train.run.build_trainer` and the worker loop:
real dataset, chat-formatted examples, answer-only loss, DeepSpeed) for --steps optimizer steps,
with validation reduced to one tiny pass at the end. Figures per run:
  * tokens/s: non-padding tokens through forward+backward per second, all workers together, the
    median over steps after --warmup (from the run's own per-step metric);
  * peak memory of each worker (peak RSS on CPU, peak allocated GPU memory on GPUs).
The baseline, measured first in the same session, is a plain single-process loop (transformers +
PEFT + torch AdamW, same batches and loss, all of this machine's cores): the ratio shows what Ray
Train + DeepSpeed cost or gain. Each Train run also gets a child MLflow run under one parent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def plain_loop(cfg, model_path: str, rows: list[dict], steps: int, warmup: int, threads: int) -> dict:
    """transformers + PEFT + AdamW in this process: the same micro-batches and answer-only loss."""
    import resource

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from app.train.batching import causal_lm_loss, pad_batch
    from app.train.engine import resolve_precision

    torch.set_num_threads(threads)
    precision = resolve_precision(cfg.training.precision, False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa")
    lora = cfg.lora
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    model.to(dtype)  # like DeepSpeed's bf16 module (which also keeps an fp32 master copy of the adapter)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.training.lr)
    mb = cfg.training.micro_batch_size * cfg.training.grad_accum_steps * cfg.training.num_workers
    rates = []
    for step in range(steps):
        batch_rows = [rows[(step * mb + i) % len(rows)] for i in range(mb)]
        started = time.perf_counter()
        tokens = 0
        for i in range(0, mb, cfg.training.micro_batch_size):
            part = batch_rows[i:i + cfg.training.micro_batch_size]
            loss, _ = causal_lm_loss(model, pad_batch(part, 2))
            loss.backward()
            tokens += sum(len(r["input_ids"]) for r in part)
        opt.step()
        opt.zero_grad()
        if step >= warmup:
            rates.append(tokens / (time.perf_counter() - started))
    return {"tokens_per_s": statistics.median(rates),
            "peak_memory_gib": [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default=None, help="experiment YAML (default: built-in defaults)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--zero", default="0,2,3", help="comma-separated ZeRO stages")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--set", "-s", action="append", default=[], help="config override (repeatable)")
    args = parser.parse_args()

    import mlflow
    import ray

    from app import cluster
    from app.config import load_config
    from app.model_store import model_fingerprint, model_store
    from app.tracking import start_run
    from app.train import checkpoint as ck
    from app.train.run import build_trainer, dataset_dir, fingerprint, tokenized_datasets, train_root

    cfg = load_config(args.config, args.set)
    cores = os.cpu_count() or 1
    base = model_store(cfg).resolve(cfg.model)
    data_path = dataset_dir(cfg)
    resources = cluster.connect(cfg.ray)
    cluster.quiet_data_context()
    datasets, counts = tokenized_datasets(cfg, data_path, base.path, print)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = []
    with start_run(cfg, "benchmark_training", args.config, run_name=f"bench-train-{stamp}") as parent:
        if not args.skip_baseline:
            rows = datasets["train"].take(256)
            print(f"baseline: plain transformers + PEFT loop, {cores} threads, {args.steps} steps")
            b = plain_loop(cfg, str(base.path), rows, args.steps, args.warmup, cores)
            results.append({"run": "plain PEFT loop (1 process)", "workers": 1, "zero": "-", **b})
        for w in [int(x) for x in args.workers.split(",")]:
            for z in [int(x) for x in args.zero.split(",")]:
                name = f"bench-{stamp}-w{w}-z{z}"
                overrides = {"num_workers": w, "cpus_per_worker": max(1, int(resources.get("CPU", cores)) // w),
                             "zero_stage": z, "max_steps": args.steps, "eval_every": args.steps,
                             "eval_at_start": False, "val_generation_samples": 0, "val_loss_samples": w,
                             "checkpoint_metric": "val_loss",
                             "keep_checkpoints": 1, "run_name": name, "max_failures": 0}
                raw = cfg.to_dict()
                raw["training"].update(overrides)
                run_cfg = type(cfg).model_validate(raw)
                child = mlflow.MlflowClient().create_run(parent.info.experiment_id, run_name=name,
                                                         tags={"mlflow.parentRunId": parent.info.run_id})
                loop_args = {"config": run_cfg.to_dict(), "model_path": str(base.path),
                             "fingerprint": fingerprint(run_cfg, model_fingerprint(base)), "val_generation": [],
                             "mlflow_uri": mlflow.get_tracking_uri(), "mlflow_run_id": child.info.run_id,
                             "init_from": None, "run_name": name}
                print(f"{name}: {w} worker(s) x {overrides['cpus_per_worker']} CPU, ZeRO-{z}, {args.steps} steps")
                started = time.time()
                build_trainer(run_cfg, datasets, loop_args, name).fit()
                mlflow.MlflowClient().set_terminated(child.info.run_id)
                hist = mlflow.MlflowClient().get_metric_history(child.info.run_id, "tokens_per_s")
                rates = [m.value for m in sorted(hist, key=lambda m: m.step) if m.step > args.warmup]
                state = ck.read_state(ck.latest_checkpoint(train_root(run_cfg) / name))
                mem = [state["metrics"][f"peak_memory_gib_rank{r}"] for r in range(w)]
                results.append({"run": name, "workers": w, "zero": z, "tokens_per_s": statistics.median(rates),
                                "peak_memory_gib": mem, "wall_s": round(time.time() - started, 1)})
        ref = results[0]["tokens_per_s"]
        print(f"\n{cores} cores, {resources.get('CPU', 0):.0f} Ray CPUs; {counts['train_examples']} training examples;"
              f" micro-batch {cfg.training.micro_batch_size} per worker; tokens/s = median over steps "
              f"{args.warmup + 1}..{args.steps}; ratio vs the first row")
        print(f"{'run':<34} {'workers':>7} {'ZeRO':>4} {'tokens/s':>9} {'ratio':>6}  peak memory per worker (GiB)")
        for r in results:
            mem = ", ".join(f"{m:.2f}" for m in r["peak_memory_gib"])
            print(f"{r['run']:<34} {r['workers']:>7} {str(r['zero']):>4} {r['tokens_per_s']:>9.1f} "
                  f"{r['tokens_per_s'] / ref:>6.2f}  {mem}")
        mlflow.log_dict({"results": results, "cores": cores}, "benchmark/train_throughput.json")
    print(json.dumps(results, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
