"""The loop every Ray Train worker runs: setup -> resume -> train -> validate -> checkpoint.

Written out step by step on purpose (no generic trainer). Rank 0 logs to MLflow and prints
progress; all ranks take part in every collective (DeepSpeed gradient reduction, ZeRO-3 parameter
gathering, validation gathering, checkpoint saving, ``ray.train.report``).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import BaseModel, ConfigDict

from app.config import ExperimentConfig
from app.eval.metrics import DomainRule, mean_scores, score_answers
from app.generate import generate_batch
from app.prompts import qa_messages, truncate_context
from app.train import checkpoint as ck
from app.train.batching import causal_lm_loss, pack_examples, pad_batch, pad_packed
from app.train.engine import deepspeed_config, lr_lambda, resolve_precision

# Deferred imports: deepspeed, mlflow, peft, ray, safetensors, torch, transformers
# are imported inside the functions that use them, for start-up time: the modules that import
# this one (other stages, the tests, Ray workers) must not pay for them until a function needs them.

SHUFFLE_BUFFER = 1024


def say(msg: str) -> None:
    """A progress line in the job's log. Not print(): Ray Train patches print into its logger, which
    echoes every line twice once another library has wrapped sys.stdout."""
    sys.stdout.write(f"[train] {msg}\n")
    sys.stdout.flush()


class LoopArgs(BaseModel):
    """What the driver hands every worker (``train_loop_config``); JSON-serializable."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any]
    model_path: str
    fingerprint: dict[str, Any]
    val_generation: list[dict[str, Any]]
    mlflow_uri: str | None = None
    mlflow_run_id: str | None = None
    init_from: str | None = None
    run_name: str


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint's trainer_state.json."""

    step: int = 0
    epoch: int = 0
    epoch_batches: int = 0          # micro-batches this rank consumed in the current epoch
    tokens_seen: int = 0            # non-padding tokens, all ranks
    restarts: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class Tracker:
    """Rank 0's MLflow logger: a failing tracking server warns once and never stops training."""

    def __init__(self, uri: str | None, run_id: str | None, enabled: bool):
        self.enabled = bool(enabled and uri and run_id)
        self.run_id = run_id
        self.warned = False
        if self.enabled:
            from mlflow import MlflowClient

            self.client = MlflowClient(uri)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                                        if v is not None and math.isfinite(float(v))])
        except Exception as exc:  # noqa: BLE001 - tracking must not kill a training run
            if not self.warned:
                say(f"warning: MLflow logging failed ({type(exc).__name__}: {exc}); training goes on")
                self.warned = True

    def tag(self, key: str, value: str) -> None:
        if self.enabled:
            try:
                self.client.set_tag(self.run_id, key, value)
            except Exception:  # noqa: BLE001
                pass


def peak_memory_gib(use_gpu: bool) -> float:
    """This worker's peak memory: GPU memory allocated on GPUs, else the process's peak RSS."""
    if use_gpu:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# -- collectives (no-ops for a single worker) ------------------------------------------------------


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def all_sum(values: list[float], device: Any) -> list[float]:
    import torch

    dist = _dist()
    if dist is None:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank_done(has_batch: bool, device: Any) -> bool:
    """True when some rank has run out of batches (all ranks must take the same number of steps)."""
    import torch

    dist = _dist()
    if dist is None:
        return not has_batch
    flag = torch.tensor([1 if has_batch else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.item() == 0


def lockstep(batches: Iterable[Any], device: Any) -> Iterator[Any]:
    """Yield batches while every rank still has one (shards may differ by a batch after packing)."""
    it = iter(batches)
    while True:
        batch = next(it, None)
        if any_rank_done(batch is not None, device):
            return
        yield batch


def gather_objects(obj: Any) -> list[Any]:
    dist = _dist()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    dist = _dist()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- data -------------------------------------------------------------------------------------------


def micro_batches(shard: Any, cfg: ExperimentConfig, epoch: int, pad_id: int, max_len: int,
                  shuffle: bool = True, max_rows: int | None = None) -> Iterator[tuple[dict[str, Any], int]]:
    """This rank's (micro-batch, real tokens in it) for one pass over its shard, shuffled per epoch
    with a fixed seed."""
    t = cfg.training
    rows_iter = shard.iter_batches(
        batch_size=t.micro_batch_size, batch_format="numpy", drop_last=False,
        local_shuffle_buffer_size=SHUFFLE_BUFFER if shuffle else None,
        local_shuffle_seed=cfg.seed + epoch if shuffle else None)

    def rows() -> Iterator[dict[str, Any]]:
        n = 0
        for b in rows_iter:
            for i in range(len(b["input_ids"])):
                if max_rows is not None and n >= max_rows:
                    return
                n += 1
                yield {"input_ids": b["input_ids"][i], "labels": b["labels"][i]}

    # micro_batch_size sequences per batch: packed ones (several examples each) or single examples.
    source, collate = (pack_examples(rows(), max_len), pad_packed) if t.packing else (rows(), pad_batch)
    group: list[dict[str, Any]] = []
    for item in source:
        group.append(item)
        if len(group) == t.micro_batch_size:
            yield collate(group, pad_id), sum(len(g["input_ids"]) for g in group)
            group = []
    if group:
        yield collate(group, pad_id), sum(len(g["input_ids"]) for g in group)


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# -- validation -------------------------------------------------------------------------------------


def validate(engine: Any, tokenizer: Any, cfg: ExperimentConfig, args: LoopArgs, val_shard: Any,
             rank: int, world: int, device: Any, pad_id: int, max_len: int) -> dict[str, float]:
    """Validation loss over the validation shards and greedy-answer metrics over a fixed sample.

    Every rank returns the same dict (computed on rank 0, broadcast).
    """
    import torch

    t, zero3 = cfg.training, cfg.training.zero_stage == 3
    engine.eval()
    started = time.time()
    loss_sum, n_tok = 0.0, 0
    per_rank = math.ceil(t.val_loss_samples / world) if t.val_loss_samples else None
    batches = micro_batches(val_shard, cfg, 0, pad_id, max_len, shuffle=False, max_rows=per_rank)
    # ZeRO-3 gathers parameters inside every forward: ranks must run the same number of them.
    for batch, _ in (lockstep(batches, device) if zero3 else batches):
        with torch.no_grad():
            loss, n = causal_lm_loss(engine, _to(batch, device))
        loss_sum += float(loss) * n
        n_tok += n
    loss_sum, n_tok = all_sum([loss_sum, float(n_tok)], device)
    loss_seconds = time.time() - started

    records = args.val_generation
    mine = list(range(rank, len(records), world))
    if zero3:  # the same number of generate calls everywhere; the padding answers are dropped
        mine += [mine[0] if mine else 0] * (math.ceil(len(records) / world) - len(mine))
    convs = [qa_messages(records[i]["question"],
                         truncate_context(records[i].get("context") or "", tokenizer, cfg.prompt.max_context_tokens),
                         cfg.prompt) for i in mine]
    answers = generate_batch(engine.module, tokenizer, convs, t.val_max_new_tokens, t.val_batch_size,
                             synced_gpus=zero3) if convs else []
    gathered = gather_objects(list(zip(mine, answers))[: len(range(rank, len(records), world))])
    metrics: dict[str, float] = {}
    if rank == 0:
        metrics["val_loss"] = loss_sum / max(n_tok, 1)
        if records:
            by_index = dict(pair for part in gathered for pair in part)
            preds = [by_index[i] for i in range(len(records))]
            rows = score_answers(preds, [r["answer"] for r in records], DomainRule.of(cfg.evaluation))
            means = mean_scores(rows)
            metrics.update({f"val_{k.replace('domain_correct', 'domain_accuracy')}": v for k, v in means.items()})
            for r, p in list(zip(records, preds))[:2]:
                say(f"  Q: {r['question'][:100]}")
                say(f"  A: {p[:160]!r}")
        metrics["val_seconds"] = time.time() - started
        metrics["val_loss_seconds"] = loss_seconds
    engine.train()
    return broadcast_object(metrics)


# -- checkpoints ------------------------------------------------------------------------------------


def _trainable(module: Any) -> list[Any]:
    return [p for p in module.parameters() if p.requires_grad]


def save_and_report(engine: Any, state: TrainState, metrics: dict[str, float], cfg: ExperimentConfig,
                    args: LoopArgs, rank: int, world: int, precision: str) -> None:
    """Write this rank's part of the checkpoint and report it (Ray merges the ranks' folders)."""
    import deepspeed
    import ray.train

    zero3 = cfg.training.zero_stage == 3
    with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
        folder = Path(tmp)
        engine.save_checkpoint(str(folder / ck.DS_DIR), tag=ck.DS_TAG, exclude_frozen_parameters=True,
                               client_state={"trainer_step": state.step})
        with deepspeed.zero.GatheredParameters(_trainable(engine.module), modifier_rank=None, enabled=zero3):
            if rank == 0:
                engine.module.save_pretrained(str(folder / ck.ADAPTER_DIR), safe_serialization=True)
        if rank == 0:
            # Written last: its presence means the rest of rank 0's part is complete.
            record = {"format": ck.FORMAT, **asdict(state), "metrics": metrics, "world_size": world,
                      "zero_stage": cfg.training.zero_stage, "precision": precision,
                      "fingerprint": args.fingerprint, "run_name": args.run_name, "mlflow_run_id": args.mlflow_run_id,
                      "max_steps": cfg.training.max_steps, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (folder / ck.STATE_FILE).write_text(json.dumps(record, indent=2))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=ck.step_dir_name(state.step))


def load_full_state(engine: Any, folder: Path, args: LoopArgs, cfg: ExperimentConfig, world: int,
                    precision: str) -> TrainState:
    """Resume exactly: adapter, optimizer partitions, schedule and position, after checking them."""
    saved = ck.read_state(folder)
    ck.check_compatible(folder, saved, args.fingerprint, world, cfg.training.zero_stage, precision, weights_only=False)
    ck.check_deepspeed_files(folder, world, cfg.training.zero_stage)
    try:
        path, _ = engine.load_checkpoint(str(folder / ck.DS_DIR), tag=ck.DS_TAG, load_module_strict=False,
                                         load_optimizer_states=True, load_lr_scheduler_states=True)
    except Exception as exc:  # noqa: BLE001 - DeepSpeed raises many kinds; the user needs the path and cause
        raise ck.CheckpointError(f"checkpoint {folder}: DeepSpeed could not load it ({type(exc).__name__}: "
                                 f"{str(exc)[:500]})") from None
    if path is None:
        raise ck.CheckpointError(f"checkpoint {folder}: DeepSpeed found no state under {folder / ck.DS_DIR}")
    fields = {k: saved[k] for k in ("step", "epoch", "epoch_batches", "tokens_seen", "restarts") if k in saved}
    return TrainState(**fields, metrics=saved.get("metrics", {}))


def load_adapter_weights(model: Any, folder: Path, args: LoopArgs) -> int:
    """Copy a checkpoint's adapter into the (not yet DeepSpeed-wrapped) model; returns its step."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = ck.read_state(folder)
    ck.check_compatible(folder, saved, args.fingerprint, 0, 0, "", weights_only=True)
    ck.check_adapter(folder)
    weights = load_file(str(folder / ck.ADAPTER_DIR / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ck.CheckpointError(f"checkpoint {folder}: adapter tensors {unexpected[:3]} do not fit this model")
    return int(saved["step"])


# -- the loop ---------------------------------------------------------------------------------------


def train_loop_per_worker(raw: dict[str, Any]) -> None:
    import deepspeed
    import ray.train
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # ---- setup
    args = LoopArgs.model_validate(raw)
    cfg = ExperimentConfig.model_validate(args.config)
    t = cfg.training
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if not t.use_gpu:
        torch.set_num_threads(t.cpus_per_worker)
    precision = resolve_precision(t.precision, t.use_gpu)
    max_len = t.max_seq_len or cfg.model.max_seq_len
    tracker = Tracker(args.mlflow_uri, args.mlflow_run_id, enabled=rank == 0)
    log = say if rank == 0 else (lambda _msg: None)

    # DeepSpeed's communication layer on top of the process group Ray Train set up (it reads world size
    # from it when it checks the batch settings, also inside HfDeepSpeedConfig below).
    deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")
    ds_config = deepspeed_config(t, precision, world)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    hf_ds = None
    if t.zero_stage == 3:
        # Kept alive through from_pretrained: transformers then loads straight into ZeRO-3 partitions.
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_config)
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(cfg.seed)  # the same initial adapter on every rank
    lora = cfg.lora
    model = get_peft_model(model, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules), bias=lora.bias,
                                                 task_type="CAUSAL_LM"))
    init_step = None
    restored = ray.train.get_checkpoint()
    if restored is None and args.init_from and cfg.training.init_weights_only:
        init_step = load_adapter_weights(model, Path(args.init_from), args)
        log(f"adapter weights from {args.init_from} (its step {init_step}); optimizer and schedule start fresh")
    if t.qat is not None:
        from app.train.qat import apply_qat

        counts = apply_qat(model, t.qat)
        log(f"QAT: INT4 {t.qat.scheme} g{t.qat.group_size} fake quantization on {counts['lora_layers']} adapted and "
            f"{counts['frozen_layers']} frozen Linear layers")
    n_trainable = sum(p.numel() for p in _trainable(model))
    optimizer = torch.optim.AdamW(_trainable(model), lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t))
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config, dist_init_required=False)
    del hf_ds

    # ---- resume
    state = TrainState()
    if restored is not None:
        with restored.as_directory() as folder:
            state = load_full_state(engine, Path(folder), args, cfg, world, precision)
        state.restarts += 1
        log(f"resumed from the checkpoint at step {state.step} (epoch {state.epoch}, "
            f"{state.epoch_batches} micro-batches into it); restart {state.restarts}")
        tracker.log({"resumed_from_step": state.step, "restarts": state.restarts}, step=state.step)
    elif args.init_from and not t.init_weights_only:
        state = load_full_state(engine, Path(args.init_from), args, cfg, world, precision)
        log(f"started from checkpoint {args.init_from} at step {state.step}")
    torch.manual_seed(cfg.seed + 1000 * rank + state.step)  # dropout masks differ per rank and per restart
    log(f"{world} worker(s), ZeRO-{t.zero_stage}, {precision}, {n_trainable / 1e6:.2f}M trainable parameters, "
        f"micro-batch {t.micro_batch_size} x accumulation {t.grad_accum_steps} x {world} workers")

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation")

    def checkpoint(metrics: dict[str, float]) -> None:
        state.metrics = metrics
        save_and_report(engine, state, metrics, cfg, args, rank, world, precision)

    if state.step == 0 and t.eval_at_start and restored is None and init_step is None and not args.init_from:
        metrics = validate(engine, tokenizer, cfg, args, val_shard, rank, world, device, pad_id, max_len)
        tracker.log(metrics, step=0)
        log("step 0 (base model): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        ray.train.report(metrics)

    # ---- train
    engine.train()
    window = {"loss": 0.0, "micro": 0, "tokens": 0, "answer_tokens": 0, "t0": time.time()}
    started, start_step = time.time(), state.step
    while state.step < t.max_steps:
        batches = micro_batches(train_shard, cfg, state.epoch, pad_id, max_len)
        skip = state.epoch_batches
        produced = 0
        for batch, n_real in lockstep(batches, device):
            produced += 1
            if produced <= skip:  # resuming mid-epoch: these were consumed before the restart
                continue
            batch = _to(batch, device)
            before = engine.global_steps
            loss, n_answer = causal_lm_loss(engine, batch)
            engine.backward(loss)
            engine.step()
            state.epoch_batches += 1
            window["loss"] += float(loss)
            window["micro"] += 1
            window["tokens"] += n_real
            window["answer_tokens"] += n_answer
            if engine.global_steps == before:
                continue  # still accumulating
            state.step = engine.global_steps
            if state.step % t.log_every == 0 or state.step == t.max_steps or state.step % t.eval_every == 0:
                loss_sum, micro, tokens, answer_tokens = all_sum(
                    [window["loss"], window["micro"], window["tokens"], window["answer_tokens"]], device)
                seconds = time.time() - window["t0"]
                state.tokens_seen += int(tokens)
                done = (state.step - start_step) / max(time.time() - started, 1e-9)
                row = {"train_loss": loss_sum / max(micro, 1), "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(engine.get_global_grad_norm() or 0.0), "epoch": state.epoch,
                       "tokens_per_s": tokens / seconds, "tokens_per_s_per_worker": tokens / seconds / world,
                       "answer_tokens_per_s": answer_tokens / seconds, "tokens_seen": state.tokens_seen}
                tracker.log(row, step=state.step)
                log(f"step {state.step}/{t.max_steps} loss {row['train_loss']:.4f} lr {row['lr']:.2e} "
                    f"{row['tokens_per_s']:.0f} tok/s, about {(t.max_steps - state.step) / max(done, 1e-9) / 60:.1f} "
                    "min left")
                window = {"loss": 0.0, "micro": 0, "tokens": 0, "answer_tokens": 0, "t0": time.time()}
            if state.step % t.eval_every == 0 or state.step >= t.max_steps:
                metrics = validate(engine, tokenizer, cfg, args, val_shard, rank, world, device, pad_id, max_len)
                mem = gather_objects(peak_memory_gib(t.use_gpu))
                metrics.update({"peak_memory_gib_max": max(mem), **{f"peak_memory_gib_rank{r}": m for r, m in enumerate(mem)}})
                metrics["step"] = state.step
                tracker.log(metrics, step=state.step)
                log(f"validation at step {state.step}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_")))
                checkpoint(metrics)
                window["t0"] = time.time()  # validation time is not training throughput
            if state.step >= t.max_steps:
                break
        else:
            if produced == 0:
                raise RuntimeError("the training split gave no batch on some worker: it has fewer rows than "
                                   f"workers x micro_batch_size ({world} x {t.micro_batch_size})")
            state.epoch += 1
            state.epoch_batches = 0
            continue
        break
    log(f"done: step {state.step}, {state.tokens_seen} tokens, {(time.time() - started) / 60:.1f} min")

