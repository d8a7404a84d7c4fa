"""`app train run`: LoRA fine-tuning on Ray Train + DeepSpeed, from dataset to registered model.

The driver resolves the base model and the dataset version, tokenizes the splits on Ray Data,
checks that a run resumed under the same name (or a named starting checkpoint) fits this config,
starts a TorchTrainer whose workers run :func:`app.train.loop.train_loop_per_worker`, then exports
the best checkpoint (adapter + merged model in the store + MLflow registry) and answers the whole
validation split with the base and the fine-tuned model to report both domain accuracies.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from app import cluster
from app.config import ExperimentConfig, PromptConfig
from app.datasets import DatasetError, latest_dataset, origin_of
from app.errors import AppError
from app.eval.metrics import DomainRule, mean_scores, score_answers
from app.generate import generate_batch
from app.model_store import check_target_modules, model_fingerprint, model_store
from app.prompts import qa_messages, truncate_context
from app.sampling import stratified_sample
from app.tracking import connect, log_step_metrics, log_table, start_run
from app.train import checkpoint as ck
from app.train.config import CHECKPOINT_METRICS, RESUMABLE_CHANGES
from app.train.data import add_distractors, tokenize_batch
from app.train.export import merge_adapter, register_in_mlflow
from app.train.loop import train_loop_per_worker

# Deferred imports: mlflow, ray, torch, transformers are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


class TrainingError(AppError, RuntimeError):
    """Training could not run or finish as configured; the message says why and what to change."""


# -- what a run is ----------------------------------------------------------------------------------


def train_root(cfg: ExperimentConfig) -> Path:
    return cfg.paths.resolved_home() / "train"


def dataset_dir(cfg: ExperimentConfig) -> Path:
    """The dataset version to train on: the latest successful build of data.name."""
    path = latest_dataset(cfg)
    missing = [s for s in ("train", "validation") if not (path / f"{s}.parquet").is_file()]
    if missing:
        raise DatasetError(f"dataset {path} lacks {missing} split files; rebuild it with `app dataset build`")
    return path


def fingerprint(cfg: ExperimentConfig, model_sha: str) -> dict[str, Any]:
    """What a checkpoint's adapter means: the base model's weights and the adapter's shape."""
    lora = cfg.lora
    return {"base_model": {"name": cfg.model.name, "sha256": model_sha},
            "lora": {"r": lora.r, "alpha": lora.alpha, "target_modules": sorted(lora.target_modules), "bias": lora.bias}}


def run_key(cfg: ExperimentConfig, dataset_version: str, model_sha: str) -> dict[str, Any]:
    """Everything that defines a training run; re-running with an equal key resumes it."""
    training = {k: v for k, v in cfg.training.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}
    return {"model": {"name": cfg.model.name, "sha256": model_sha, "dtype": cfg.model.dtype},
            "lora": cfg.lora.model_dump(mode="json"), "prompt": cfg.prompt.model_dump(mode="json"),
            "training": training, "dataset": {"name": cfg.data.name, "version": dataset_version}, "seed": cfg.seed}


def default_run_name(cfg: ExperimentConfig, key: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', cfg.name)}-{digest}"


def check_resume(run_dir: Path, saved: dict[str, Any], key: dict[str, Any]) -> None:
    """Raise TrainingError naming each setting that differs from the run being resumed."""
    diffs = ck.differences(saved.get("key", {}), key)
    if diffs:
        raise TrainingError(
            f"training run {run_dir.name!r} exists ({run_dir}) with other settings, so it cannot be resumed: "
            + "; ".join(d.replace("in the checkpoint", "in the run") for d in diffs)
            + ". Restore those settings to resume it, or set training.run_name to start a new run.")


def preflight_checkpoint(folder: Path, fp: dict[str, Any], cfg: ExperimentConfig, weights_only: bool) -> dict[str, Any]:
    """Check a checkpoint on the driver before any worker starts (workers check again when loading).

    World size and precision are checked by the workers (precision 'auto' is resolved there).
    """
    state = ck.read_state(folder)
    ck.check_adapter(folder)
    t = cfg.training
    if weights_only:
        ck.check_compatible(folder, state, fp, 0, 0, "", weights_only=True)
    else:
        precision = state["precision"] if t.precision == "auto" else t.precision
        ck.check_compatible(folder, state, fp, t.num_workers, t.zero_stage, precision, weights_only=False)
        ck.check_deepspeed_files(folder, t.num_workers, t.zero_stage)
    return state


def failure_message(exc: BaseException) -> str:
    """The worker's own error line out of Ray Train's wrapped failure (CheckpointError first)."""
    text = str(exc)
    for pattern in (r"CheckpointError: (.+)", r"TemplateError: (.+)", r"RuntimeError: (.+)", r"Error: (.+)"):
        found = re.findall(pattern, text)
        if found:
            return found[-1].strip()
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


# -- data -------------------------------------------------------------------------------------------


def tokenized_datasets(cfg: ExperimentConfig, path: Path, model_path: Path,
                       progress: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, int]]:
    """The train and validation splits as tokenized Ray Datasets (one materialized pass for both),
    with row counts and the number of examples dropped for exceeding the sequence limit."""
    import ray
    from ray.data.expressions import col, lit

    max_len = cfg.training.max_seq_len or cfg.model.max_seq_len
    frames = []
    for split in ("train", "validation"):
        frame = pd.read_parquet(path / f"{split}.parquet", columns=["pair_id", "question", "answer", "context"])
        if frame.empty:
            raise DatasetError(f"the {split} split of {path} is empty")
        k = cfg.training.context_distractors if cfg.prompt.use_context else 0
        if k:  # the same columns in every split, distractors only in training's (its own passages: no
            # validation or test text)
            frame = add_distractors(frame, k if split == "train" else 0, cfg.seed)
            if split == "train":
                progress(f"  training contexts: own passage among {k} BM25-retrieved passages of other training chunks")
        frames.append(frame.assign(split=split))
    frame = pd.concat(frames, ignore_index=True)
    # A few blocks: parallel tokenization, and room for Ray Train to give every worker its share.
    n_blocks = max(2, min(len(frame) // 64, 8 * cfg.data.concurrency))
    ds = ray.data.from_pandas([frame.iloc[i::n_blocks] for i in range(n_blocks)]).map_batches(
        tokenize_batch, fn_kwargs={"model_path": str(model_path), "prompt": cfg.prompt.model_dump(),
                                   "max_seq_len": max_len},
        batch_format="pandas", batch_size=64, compute=ray.data.TaskPoolStrategy(size=cfg.data.concurrency))
    ds = ds.materialize()
    stats = ds.select_columns(["split", "too_long", "n_tokens", "n_answer_tokens"]).to_pandas()
    out, counts = {}, {}
    for split in ("train", "validation"):
        rows = stats[stats["split"] == split]
        kept = rows[~rows["too_long"]]
        counts[f"{split}_examples"] = int(len(kept))
        counts[f"{split}_dropped_too_long"] = int(rows["too_long"].sum())
        if split == "train":
            counts["train_tokens_mean"] = float(kept["n_tokens"].mean()) if len(kept) else 0.0
            counts["train_answer_tokens_mean"] = float(kept["n_answer_tokens"].mean()) if len(kept) else 0.0
        if counts[f"{split}_dropped_too_long"]:
            progress(f"  {split}: {counts[f'{split}_dropped_too_long']} example(s) longer than {max_len} tokens dropped")
        # Materialized here: once the Train workers hold the CPUs, a lazy step could find none to run on.
        out[split] = ds.filter(expr=(col("split") == lit(split)) & (col("too_long") == lit(False))).select_columns(
            ["input_ids", "labels"]).materialize()
    if counts["train_examples"] < cfg.training.num_workers * cfg.training.micro_batch_size:
        raise DatasetError(f"{counts['train_examples']} training examples are fewer than training.num_workers x "
                           f"micro_batch_size ({cfg.training.num_workers} x {cfg.training.micro_batch_size})")
    if counts["validation_examples"] == 0:
        raise DatasetError(f"no validation example of {path} fits in {max_len} tokens")
    return out, counts


def generation_sample(path: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """The fixed validation sample answered at every validation (stratified by topic)."""
    frame = pd.read_parquet(path / "validation.parquet", columns=["pair_id", "question", "answer", "context", "topic"])
    records = sorted(frame.to_dict("records"), key=lambda r: r["pair_id"])
    return stratified_sample(records, n, seed)


# -- the trainer ------------------------------------------------------------------------------------


def build_trainer(cfg: ExperimentConfig, datasets: dict[str, Any], loop_args: dict[str, Any], run_name: str,
                  callbacks: list[Any] | None = None):
    """The TorchTrainer of a training section (shared by `train run` and every `train tune` trial)."""
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.training
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_args,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(
            name=run_name, storage_path=str(train_root(cfg)),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints,
                                               checkpoint_score_attribute=t.checkpoint_metric,
                                               checkpoint_score_order=CHECKPOINT_METRICS[t.checkpoint_metric]),
            failure_config=FailureConfig(max_failures=t.max_failures),
            callbacks=callbacks or None),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all"),
    )


# -- after training ---------------------------------------------------------------------------------


def answer_split(model_dir: str, records: list[dict[str, Any]], prompt: dict[str, Any], max_new_tokens: int,
                 batch_size: int, dtype: str, threads: int) -> list[str]:
    """Greedy answers of one model to (question, context) records: the validation comparison's engine."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    p = PromptConfig.model_validate(prompt)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    convs = [qa_messages(r["question"], truncate_context(r.get("context") or "", tokenizer, p.max_context_tokens), p)
             for r in records]
    return generate_batch(model, tokenizer, convs, max_new_tokens, batch_size)


def compare_on_validation(cfg: ExperimentConfig, path: Path, models: dict[str, Path],
                          progress: Callable[[str], None]) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """Every model answers the whole validation split the same way; per-model mean metrics and the
    per-example table (question, reference, each model's answer and scores)."""
    import ray

    t = cfg.training

    frame = pd.read_parquet(path / "validation.parquet").sort_values("pair_id").reset_index(drop=True)
    if t.compare_samples and t.compare_samples < len(frame):
        keep = {r["pair_id"] for r in stratified_sample(frame.to_dict("records"), t.compare_samples, cfg.seed)}
        frame = frame[frame["pair_id"].isin(keep)].reset_index(drop=True)
    records = frame[["pair_id", "question", "answer", "context", "topic", "generator"]].to_dict("records")
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // len(models))
    threads = max(1, min(cpus, t.cpus_per_worker * t.num_workers // len(models) or 1))
    task = ray.remote(num_cpus=threads)(answer_split)
    progress(f"answering the {len(records)} validation questions with {', '.join(models)} "
             f"(greedy, at most {t.val_max_new_tokens} tokens, {cfg.model.dtype})")
    started = time.time()
    refs = {name: task.remote(str(p), records, cfg.prompt.model_dump(), t.val_max_new_tokens, t.val_batch_size,
                              cfg.model.dtype, threads) for name, p in models.items()}
    answers = {name: ray.get(ref) for name, ref in refs.items()}
    progress(f"  answered in {time.time() - started:.0f} s")
    table = frame[["pair_id", "topic", "generator", "question", "answer"]].rename(columns={"answer": "reference"})
    table.insert(3, "origin", (frame["origin"] if "origin" in frame else frame["generator"]).map(origin_of))
    summary = {}
    for name, preds in answers.items():
        rows = score_answers(preds, table["reference"].tolist(), DomainRule.of(cfg.evaluation))
        table[f"{name}_answer"] = preds
        for k in rows[0]:
            table[f"{name}_{k}"] = [r[k] for r in rows]
        summary[name] = mean_scores(rows)
    return summary, table


def relative_improvement(base: float, tuned: float) -> float | None:
    return None if base == 0 else (tuned - base) / base


# -- the stage --------------------------------------------------------------------------------------


def finetune(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
             progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune LoRA adapters on the latest dataset; export, register and compare the best checkpoint."""
    import mlflow
    import ray
    from ray.train import TrainingFailedError

    t = cfg.training
    connect(cfg)  # the tracking server first: a resumed run reopens its MLflow run
    store = model_store(cfg)
    base = store.resolve(cfg.model, progress=progress)
    check_target_modules(cfg.lora.target_modules, base.path)
    data_path = dataset_dir(cfg)
    manifest = json.loads((data_path / "manifest.json").read_text()) if (data_path / "manifest.json").is_file() else {}
    model_sha = model_fingerprint(base)
    fp = fingerprint(cfg, model_sha)
    key = run_key(cfg, data_path.name, model_sha)
    run_name = t.run_name or default_run_name(cfg, key)
    if rerun_of and not t.run_name:  # `app rerun`: the same settings trained anew, not the old run resumed
        run_name = f"{run_name}-rerun-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = train_root(cfg) / run_name
    previous = ck.read_run(run_dir)
    latest = ck.latest_checkpoint(run_dir)
    if previous:
        check_resume(run_dir, previous, key)
    elif latest:
        raise TrainingError(f"{run_dir} holds checkpoints but no {ck.RUN_FILE}: it was not made by this app or is "
                            "damaged; pick another training.run_name")
    if latest:
        preflight_checkpoint(latest, fp, cfg, weights_only=False)
        progress(f"run {run_name}: resuming from its latest checkpoint {latest.name}")
    init_from = None
    if t.init_from and not latest:
        init_from = ck.resolve(t.init_from, train_root(cfg), t.checkpoint_metric, CHECKPOINT_METRICS[t.checkpoint_metric])
        preflight_checkpoint(init_from, fp, cfg, weights_only=t.init_weights_only)
        progress(f"starting from checkpoint {init_from}" + (" (adapter weights only)" if t.init_weights_only else ""))

    output_model = t.output_model or f"{cfg.model.name}-lora"
    if output_model == cfg.model.name:
        raise TrainingError(f"training.output_model {output_model!r} is the base model's name; pick another")
    resources = cluster.connect(cfg.ray)
    need = t.num_workers * t.cpus_per_worker
    if resources.get("CPU", 0) < need or (t.use_gpu and resources.get("GPU", 0) < t.num_workers):
        raise TrainingError(f"the Ray cluster has {resources.get('CPU', 0):.0f} CPUs and {resources.get('GPU', 0):.0f} "
                            f"GPUs; training needs {need} CPUs" + (f" and {t.num_workers} GPUs" if t.use_gpu else "")
                            + " (training.num_workers x cpus_per_worker)")

    cluster.quiet_data_context()
    progress(f"tokenizing {data_path.name} on Ray Data (prompt with context: {cfg.prompt.use_context})")
    datasets, counts = tokenized_datasets(cfg, data_path, base.path, progress)
    val_gen = generation_sample(data_path, t.val_generation_samples, cfg.seed)
    progress(f"  {counts['train_examples']} training and {counts['validation_examples']} validation examples; "
             f"{len(val_gen)} validation questions answered at each validation")

    tags = {"train.run_name": run_name, "dataset.version": data_path.name, "model.base": cfg.model.name,
            **({"rerun_of": rerun_of} if rerun_of else {})}
    inputs = {"dataset": manifest.get("content_hash", data_path.name), "model": model_sha}
    with start_run(cfg, "finetune", config_path, inputs=inputs, tags=tags, run_name=f"finetune-{run_name}",
                   resume_run_id=_existing_mlflow_run(previous)) as run:
        record = {**previous, "name": run_name, "key": key, "mlflow_run_id": run.info.run_id,
                  "checkpoint_metric": t.checkpoint_metric, "checkpoint_mode": CHECKPOINT_METRICS[t.checkpoint_metric],
                  "dataset": str(data_path), "base_model": str(base.path), "config_hash": cfg.content_hash(),
                  "created": previous.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        ck.write_run(run_dir, record)
        log_step_metrics({k: float(v) for k, v in counts.items()}, step=0)
        loop_args = {"config": cfg.to_dict(), "model_path": str(base.path), "fingerprint": fp,
                     "val_generation": val_gen, "mlflow_uri": mlflow.get_tracking_uri(),
                     "mlflow_run_id": run.info.run_id, "init_from": str(init_from) if init_from else None,
                     "run_name": run_name}
        started = time.time()
        if latest and ck.read_state(latest)["step"] >= t.max_steps:
            progress(f"run {run_name} already reached step {t.max_steps}; exporting its best checkpoint "
                     "(set training.run_name for a new run)")
        else:
            progress(f"training on {t.num_workers} Ray Train worker(s) (checkpoints: {run_dir})")
            try:
                build_trainer(cfg, datasets, loop_args, run_name).fit()
            except TrainingFailedError as exc:
                raise TrainingError(f"training run {run_name} failed: {failure_message(exc)} "
                                    f"(worker logs: `ray logs` or the Ray dashboard; checkpoints: {run_dir})") from None
        train_seconds = time.time() - started
        mode = CHECKPOINT_METRICS[t.checkpoint_metric]
        best = ck.best_checkpoint(run_dir, t.checkpoint_metric, mode)
        if best is None:
            raise TrainingError(f"run {run_name} left no checkpoint with {t.checkpoint_metric}; see {run_dir}")
        best_state = ck.read_state(best)
        progress(f"best checkpoint: {best.name} ({t.checkpoint_metric} {best_state['metrics'][t.checkpoint_metric]:.4f})")
        mlflow.set_tags({"train.best_checkpoint": str(best), "train.best_step": str(best_state["step"])})
        log_step_metrics({f"best_{k}": v for k, v in best_state["metrics"].items() if isinstance(v, (int, float))},
                         step=best_state["step"])
        mlflow.log_artifacts(str(best / ck.ADAPTER_DIR), artifact_path="adapter")
        mlflow.log_dict(best_state, "adapter/trainer_state.json")

        progress(f"merging the adapter into {cfg.model.name} -> store model {output_model!r}")
        tmp = store.root / f".{output_model}.export-{int(time.time())}"
        try:
            info = ray.get(ray.remote(num_cpus=1)(merge_adapter).remote(str(best), str(base.path), str(tmp),
                                                                       cfg.model.dtype))
            stored = store.register(output_model, tmp, kind="finetuned", parent=cfg.model.name, extra={
                "source": f"train:{run_name}/{best.name}", "checkpoint": str(best), "dtype": cfg.model.dtype,
                "train_run": run_name, "mlflow_run_id": run.info.run_id, "adapter": "adapter",
                "metrics": best_state["metrics"], "lora": cfg.lora.model_dump(mode="json"),
                "prompt": cfg.prompt.model_dump(mode="json"), "parameters": info["parameters"]})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        summary: dict[str, Any] = {
            "run_id": run.info.run_id, "train_run": run_name, "checkpoints": str(run_dir), "best_checkpoint": str(best),
            "best_step": best_state["step"], "best_metrics": best_state["metrics"], "model": output_model,
            "model_path": str(stored.path), "train_seconds": round(train_seconds, 1), **counts}
        if t.register_model:
            reg = register_in_mlflow(stored.path, output_model, cfg.prompt.model_dump(mode="json"),
                                     cfg.evaluation.max_new_tokens,
                                     {"train_run": run_name, "checkpoint": best.name, "base_model": cfg.model.name,
                                      t.checkpoint_metric: f"{best_state['metrics'][t.checkpoint_metric]:.4f}"})
            summary["registered_model"] = reg
            progress(f"registered {reg['name']} version {reg['version']} in the MLflow model registry")
        if t.compare_on_validation:
            means, table = compare_on_validation(cfg, data_path, {"base": base.path, "finetuned": stored.path}, progress)
            b, f = means["base"]["domain_correct"], means["finetuned"]["domain_correct"]
            rel = relative_improvement(b, f)
            metrics = {f"compare_{m}_{k}": v for m, vals in means.items() for k, v in vals.items()}
            if rel is not None:
                metrics["compare_relative_improvement"] = rel
            log_step_metrics(metrics, step=best_state["step"])
            log_table(table.to_dict("records"), "compare/validation_answers.json")
            by_origin = {o: {"n": int(len(g)), **{m: float(g[f"{m}_domain_correct"].mean()) for m in ("base", "finetuned")}}
                         for o, g in table.groupby("origin")}
            summary["validation_comparison"] = {
                "examples": len(table), "base": means["base"], "finetuned": means["finetuned"],
                "domain_accuracy": {"base": b, "finetuned": f, "relative_improvement": rel}, "by_origin": by_origin}
            progress(f"validation domain accuracy: base {b:.3f}, fine-tuned {f:.3f}"
                     + (f" ({rel:+.0%} relative)" if rel is not None else "")
                     + f"; token F1 {means['base']['token_f1']:.3f} -> {means['finetuned']['token_f1']:.3f}; "
                     + "by origin: " + ", ".join(f"{o} (n={v['n']}) {v['base']:.3f} -> {v['finetuned']:.3f}"
                                                 for o, v in by_origin.items()))
    ck.write_run(run_dir, {**ck.read_run(run_dir), "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "best": best.name, "output_model": output_model})
    return summary


def _existing_mlflow_run(previous: dict[str, Any]) -> str | None:
    """The MLflow run of a run being resumed, when the tracking server still has it."""
    run_id = previous.get("mlflow_run_id")
    if not run_id:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        return None
    return run_id
