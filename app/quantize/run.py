"""`app quantize run`: INT4 variants of the fine-tuned model, their error analysis and accuracy drop.

1. Preflight, before any work: the source model is in the store (and is not itself quantized), the
   group size divides the input width of every layer that will be quantized, the ignore list names
   real layers, the dataset's train split holds enough calibration examples, the quantization
   environment (``.venv-quant``, llm-compressor) answers, and QAT has a training checkpoint to start from.
2. QAT (``quantize.qat``): a short LoRA phase on Ray Train from the source model's best adapter,
   with the INT4 fake quantizer under the adapters (``training.qat``, :mod:`app.train.qat`); its
   merged bf16 model is stored as ``<variant>-bf16`` (its own ``finetune`` MLflow run).
3. Post-training INT4 in the quantization environment (:mod:`app.quantize.worker`): each method in
   ``quantize.methods`` calibrated on training-split examples chat-formatted exactly as in training;
   the QAT model packed with round-to-nearest min-max, the rounding its fake quantizer used. Every
   variant is written into a hidden folder of the store and registered (kind ``quantized``, with the
   recipe, calibration hash, source model and environment) only when all of them succeeded.
4. Evaluation (``quantize.evaluate``): the source and every variant through the evaluation stage
   (its own MLflow run): accuracy with intervals and paired tests against the source.
5. Error analysis (:mod:`app.quantize.analysis`): sizes, per-layer weight and output error, the
   worst layers, activation outliers, perplexity, the share of the LoRA update that survives; a
   Markdown + HTML report with plots, logged to the stage's MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from app.config import ExperimentConfig
from app.datasets import DatasetError, latest_dataset
from app.errors import AppError
from app.int4 import is_ignored
from app.model_store import ModelStoreError, StoredModel, model_fingerprint, model_store
from app.prompts import qa_messages, truncate_context
from app.quantize.checkpoint import linear_input_widths, size_report
from app.quantize.env import probe, quant_python, run_worker
from app.tracking import connect, log_step_metrics, start_run

# Deferred imports: mlflow, transformers, the training and evaluation stages and the analysis (torch)
# are imported inside the functions that use them, for start-up time.

TARGET = {"size_reduction": 0.40, "max_relative_drop": 0.02}  # the sprint's target: -40% size, < 2% accuracy drop


class QuantizeError(AppError, ValueError):
    """The quantization cannot run as configured; the message names the setting and what to change."""


def quantize_root(cfg: ExperimentConfig) -> Path:
    return cfg.paths.resolved_home() / "quantize"


# -- preflight -----------------------------------------------------------------------------------------


def source_name(cfg: ExperimentConfig) -> str:
    return cfg.quantize.source_model or cfg.training.output_model or f"{cfg.model.name}-lora"


# Linear layers vLLM fuses into one (qkv_proj, gate_up_proj): their shards must share one scheme, so
# they are quantized or left in bf16 together.
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def ignored_layers(widths: dict[str, int], ignore: list[str]) -> list[str]:
    """The exact names of the Linear layers (``linear_input_widths``) ``ignore`` leaves in bf16.
    llm-compressor matches an entry only as a whole module name or ``re:<regex>`` (not as a name's last
    part, which the config allows): it is given these names."""
    return sorted(n for n in widths if is_ignored(n, ignore))


def check_layers(model_dir: Path, group_size: int, ignore: list[str],
                 widths: dict[str, int] | None = None) -> list[str]:
    """The Linear layers that will be quantized; raises QuantizeError when the group size does not
    divide one of their input widths, an ignore entry matches nothing, it splits layers vLLM fuses,
    or nothing is left. ``widths``: the model's ``linear_input_widths`` when the caller has them."""
    widths = widths if widths is not None else linear_input_widths(model_dir)
    unknown = [p for p in ignore if not any(is_ignored(n, [p]) for n in widths)]
    if unknown:
        raise QuantizeError(f"quantize.ignore {unknown} match no Linear layer of the model at {model_dir} "
                            f"(layers look like {sorted(widths)[:3]}, or use re:<regex>)")
    targets = {n: w for n, w in widths.items() if not is_ignored(n, ignore)}
    if not targets:
        raise QuantizeError("quantize.ignore leaves no Linear layer to quantize")
    for group in FUSED:
        for name in widths:
            parent, _, leaf = name.rpartition(".")
            if leaf != group[0]:
                continue
            members = [f"{parent}.{m}" for m in group if f"{parent}.{m}" in widths]
            kept = [m for m in members if m not in targets]
            if kept and len(kept) != len(members):
                raise QuantizeError(
                    f"quantize.ignore leaves {', '.join(k.rpartition('.')[2] for k in kept)} of {parent} in bf16 but "
                    f"not {', '.join(m.rpartition('.')[2] for m in members if m in targets)}: vLLM serves "
                    f"{'/'.join(group)} as one fused layer with one scheme; ignore all of them or none")
    bad = {n: w for n, w in targets.items() if w % group_size}
    if bad:
        gcd = math.gcd(*targets.values())
        fits = [g for g in (32, 64, 128, 256) if gcd % g == 0]
        example = next(iter(bad.items()))
        raise QuantizeError(
            f"quantize.group_size {group_size} does not divide the input width of {len(bad)} of {len(targets)} layers "
            f"(e.g. {example[0]}: {example[1]}); widths here: {sorted(set(targets.values()))}, so the group size must "
            f"divide {gcd}" + (f" (e.g. {', '.join(map(str, fits))})" if fits else ""))
    return sorted(targets)


def preflight(cfg: ExperimentConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything checked before any work; the plan the stage then follows."""
    q = cfg.quantize
    if not q.methods and not q.qat:
        raise QuantizeError("nothing to do: quantize.methods is empty and quantize.qat is off")
    store = model_store(cfg)
    name = source_name(cfg)
    try:
        source = store.get(name)
    except ModelStoreError as exc:
        raise QuantizeError(f"quantize.source_model {name!r} is not usable: {exc} (train it with `app train run`, "
                            "or name a stored model)") from None
    if source.kind == "quantized":
        raise QuantizeError(f"{name!r} is already quantized ({source.manifest.get('method')}); quantize a bf16 model")
    widths = linear_input_widths(source.path)  # the model built once, on the meta device
    layers = check_layers(source.path, q.group_size, q.ignore, widths)
    kept_bf16 = ignored_layers(widths, q.ignore)
    variants = {m: q.variant_name(name, m) for m in q.methods}
    if q.qat:
        variants["qat"] = q.variant_name(name, "qat")
    clash = [v for v in variants.values() if v in (name, cfg.model.name)]
    if clash:
        raise QuantizeError(f"variant name(s) {clash} would replace the source or base model; set quantize.output_prefix")

    try:
        data_path = latest_dataset(cfg)
    except DatasetError as exc:
        raise QuantizeError(f"calibration data: {exc}") from None
    train = pd.read_parquet(data_path / "train.parquet")
    if len(train) < q.calibration_samples:
        raise QuantizeError(f"too few calibration samples: the train split of {data_path.name} has {len(train)} "
                            f"examples, quantize.calibration_samples asks for {q.calibration_samples} (lower it, "
                            "or build a bigger dataset)")
    base = None
    parent = source.manifest.get("parent")
    if parent:
        try:
            base = store.get(parent)
        except ModelStoreError:
            progress(f"note: the source's base model {parent!r} is not in the store: no LoRA-survival figures")
    qat_plan = None
    if q.qat:
        ckpt = source.manifest.get("checkpoint")
        if not ckpt or not Path(ckpt).is_dir():
            raise QuantizeError(f"quantize.qat needs the training checkpoint {name!r} was exported from; its manifest "
                                f"names {ckpt!r}, which is not there (re-run `app train run`, or set quantize.qat=false)")
        if parent != cfg.model.name:
            raise QuantizeError(f"quantize.qat trains on model.name {cfg.model.name!r}, but {name!r} was fine-tuned "
                                f"from {parent!r}; set model.name to it")
        qat_plan = {"checkpoint": ckpt, "lora": source.manifest.get("lora") or cfg.lora.model_dump(mode="json")}
    python = quant_python(q.python)
    env = probe(python) if q.methods or q.qat else {}
    return {"source": source, "base": base, "layers": layers, "kept_bf16": kept_bf16, "variants": variants, "dataset": data_path,
            "python": python, "env": env, "qat": qat_plan}


# -- calibration data ----------------------------------------------------------------------------------


def chat_texts(records: pd.DataFrame, cfg: ExperimentConfig, tokenizer: Any, with_answer: bool = True) -> list[str]:
    """Records rendered with the model's chat template and the training prompt (context cut as in training)."""
    out = []
    for r in records.itertuples(index=False):
        ctx = getattr(r, "context", None)
        ctx = truncate_context(ctx, tokenizer, cfg.prompt.max_context_tokens) if cfg.prompt.use_context and ctx else None
        msgs = qa_messages(r.question, ctx, cfg.prompt, answer=r.answer if with_answer else None)
        out.append(tokenizer.apply_chat_template(msgs, tokenize=False))
    return out


def calibration_split(cfg: ExperimentConfig, data_path: Path, tokenizer: Any) -> tuple[list[str], list[str], list[str]]:
    """(calibration, held-out, validation) texts: a seeded shuffle of the train split gives the first
    calibration_samples to calibrate on and the next heldout_samples to the analysis; validation texts
    (first perplexity_samples) come from the validation split."""
    q = cfg.quantize
    train = pd.read_parquet(data_path / "train.parquet").sample(frac=1.0, random_state=cfg.seed)
    calib = chat_texts(train.iloc[:q.calibration_samples], cfg, tokenizer)
    held = chat_texts(train.iloc[q.calibration_samples:q.calibration_samples + q.heldout_samples], cfg, tokenizer)
    val_path = data_path / "validation.parquet"
    val = pd.read_parquet(val_path).iloc[:q.perplexity_samples] if val_path.is_file() else train.iloc[:0]
    return calib, held, chat_texts(val, cfg, tokenizer)


def texts_sha256(texts: list[str]) -> str:
    return hashlib.sha256("\n\x00".join(texts).encode()).hexdigest()


# -- the stage -----------------------------------------------------------------------------------------


def run_qat(cfg: ExperimentConfig, plan: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """The quantization-aware LoRA phase on Ray Train; returns the finetune summary (its model: bf16, trained
    against the INT4 fake quantizer)."""
    from app.train.config import LoraConfig, QatConfig
    from app.train.run import finetune

    q = cfg.quantize
    out_name = f"{plan['variants']['qat']}-bf16"
    training = cfg.training.model_copy(update={
        "qat": QatConfig(scheme=q.scheme, group_size=q.group_size, ignore=list(q.ignore)),
        "init_from": plan["qat"]["checkpoint"], "init_weights_only": True, "max_steps": q.qat_steps, "lr": q.qat_lr,
        "output_model": out_name, "register_model": False, "compare_on_validation": False, "run_name": None})
    qat_cfg = cfg.model_copy(update={"training": training, "lora": LoraConfig.model_validate(plan["qat"]["lora"])})
    progress(f"== QAT: {q.qat_steps} steps from {plan['qat']['checkpoint']} with INT4 {q.scheme} g{q.group_size} "
             f"fake quantization under the adapters -> {out_name}")
    return finetune(qat_cfg, progress=progress)


def quantize_models(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    """INT4 variants of the fine-tuned model (AWQ, GPTQ, QAT, ...), evaluated and analysed."""
    import mlflow
    from transformers import AutoTokenizer

    q = cfg.quantize
    connect(cfg)
    plan = preflight(cfg, progress)
    source: StoredModel = plan["source"]
    store = model_store(cfg)
    run_name = f"quantize-{time.strftime('%Y%m%d-%H%M%S')}"
    out = quantize_root(cfg) / run_name
    out.mkdir(parents=True, exist_ok=True)
    progress(f"quantizing {source.name} ({len(plan['layers'])} Linear layers, INT4 {q.scheme} g{q.group_size}) into "
             f"{', '.join(plan['variants'].values())}; environment {plan['python']} "
             f"(llmcompressor {plan['env'].get('llmcompressor')})")

    qat_summary = run_qat(cfg, plan, progress) if q.qat else None

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    calib, held, val = calibration_split(cfg, plan["dataset"], tokenizer)
    calib_sha = texts_sha256(calib)
    (out / "calibration.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in calib), encoding="utf-8")
    inputs = {"model": model_fingerprint(source), "calibration": calib_sha}
    tags = {"quantize.source": source.name, "quantize.scheme": q.scheme, "quantize.group_size": str(q.group_size),
            "quantize.env.python": str(plan["python"]),
            **{f"quantize.env.{k}": str(v) for k, v in plan["env"].items() if k != "python"},
            "dataset.version": plan["dataset"].name,
            **({"quantize.qat_run": qat_summary["run_id"]} if qat_summary else {}),
            **({"rerun_of": rerun_of} if rerun_of else {})}
    made: dict[str, dict[str, Any]] = {}
    tmp_dirs: list[Path] = []
    with start_run(cfg, "quantize", config_path, inputs=inputs, tags=tags, run_name=run_name) as run:
        try:
            jobs = [(m, plan["variants"][m], source) for m in q.methods]
            if qat_summary:
                jobs.append(("qat", plan["variants"]["qat"], store.get(qat_summary["model"])))
            for method, variant, src in jobs:
                tmp = store.root / f".{variant}.quantize-{int(time.time())}"
                tmp_dirs.append(tmp)
                packer = "rtn" if method == "qat" else method
                progress(f"== {method}: {src.name} -> {variant}" + (" (packed round-to-nearest, as trained)"
                                                                    if method == "qat" else ""))
                job = {"model_dir": str(src.path), "out_dir": str(tmp), "method": packer, "scheme": q.scheme,
                       "group_size": q.group_size, "ignore": plan["kept_bf16"], "calibration_file": str(out / "calibration.jsonl"),
                       "max_seq_len": q.max_seq_len, "pipeline": q.pipeline, "seed": cfg.seed, "threads": q.threads,
                       "awq_grid": q.awq_grid, "gptq_dampening": q.gptq_dampening}
                result = run_worker(plan["python"], job, timeout_s=q.timeout_s, progress=progress,
                                    log_file=out / f"{method}.log")
                sizes = size_report(tmp)
                made[method] = {"name": variant, "dir": tmp, "result": result, "sizes": sizes, "from": src.name}
                progress(f"  {variant}: {sizes['safetensors_bytes'] / 2**20:.1f} MiB in {result['seconds']:.0f} s")
            # Registered only now: a failed method leaves the store as it was.
            source_sizes = size_report(source.path)
            for method, m in made.items():
                extra = {"method": method, "packer": "rtn" if method == "qat" else method, "scheme": q.scheme,
                         "group_size": q.group_size, "ignore": list(q.ignore), "kept_bf16": plan["kept_bf16"],
                         "source_model": source.name,
                         "source_sha256": model_fingerprint(source), "trained_from": m["from"],
                         "recipe": m["result"].get("recipe"), "calibration_sha256": calib_sha if method != "qat" else None,
                         "calibration_samples": m["result"].get("calibration_samples"), "max_seq_len": q.max_seq_len,
                         "pipeline": q.pipeline, "environment": m["result"].get("versions"),
                         "cpu_fixes": m["result"].get("cpu_fixes"), "mlflow_run_id": run.info.run_id,
                         "quantize_run": run_name, "sizes": m["sizes"], "dtype": "bfloat16"}
                m["stored"] = store.register(m["name"], m["dir"], kind="quantized", parent=source.name, extra=extra)
                progress(f"registered {m['name']} in the model store")
            if q.register_model:
                from app.train.export import register_in_mlflow

                for method, m in made.items():
                    m["registered"] = register_in_mlflow(
                        m["stored"].path, m["name"], cfg.prompt.model_dump(mode="json"), cfg.evaluation.max_new_tokens,
                        {"quantize_run": run_name, "method": method, "scheme": q.scheme,
                         "group_size": str(q.group_size), "source_model": source.name})
                    progress(f"registered {m['name']} version {m['registered']['version']} in the MLflow model registry")
        finally:
            for d in tmp_dirs:
                shutil.rmtree(d, ignore_errors=True)
        sizes_table = size_rows(source.name, source_sizes, made)
        mlflow.log_params({"quantize.variants": ",".join(m["name"] for m in made.values())})
        for row in sizes_table:
            mlflow.log_metrics({f"{row['model']}.size_mib": row["size_mib"],
                                f"{row['model']}.size_reduction": row["size_reduction"],
                                f"{row['model']}.quantized_layer_reduction": row["quantized_layer_reduction"]})
        for method in made:
            mlflow.log_artifact(str(out / f"{method}.log"), "logs")
            if made[method]["result"].get("recipe"):
                mlflow.log_text(made[method]["result"]["recipe"], f"recipes/{method}.yaml")
        mlflow.log_text(calib_sha + "\n", "calibration/sha256.txt")
    run_id = run.info.run_id
    variants = {method: m["name"] for method, m in made.items()}
    registered = {m["name"]: m["registered"] for m in made.values() if m.get("registered")}

    accuracy, eval_result = None, None
    if q.evaluate:
        eval_result, accuracy = evaluate_variants(cfg, source.name, variants, run_name, progress)

    from app.quantize.analysis import analyze, write_report

    progress("== error analysis: sizes, per-layer errors, activation outliers, perplexity, LoRA survival")
    results = analyze(source.path, {m["name"]: m["stored"].path for m in made.values()},
                      base_dir=plan["base"].path if plan["base"] else None, heldout_texts=held,
                      validation_texts=val, progress=progress, max_seq_len=q.max_seq_len)
    results["methods"] = {m["name"]: method for method, m in made.items()}
    files = write_report(results, out, accuracy=accuracy, title=f"INT4 quantization of {source.name}")
    summary = {"run_id": run_id, "run_name": run_name, "output": str(out), "source_model": source.name,
               "scheme": q.scheme, "group_size": q.group_size, "variants": variants, "sizes": sizes_table,
               "registered_models": registered,
               "accuracy": accuracy, "evaluation": eval_result, "qat_run": qat_summary and {
                   k: qat_summary.get(k) for k in ("run_id", "train_run", "model", "best_step", "best_metrics")},
               "environment": plan["env"], "calibration_sha256": calib_sha, "analysis": results,
               "report": str(next((f for f in files if str(f).endswith(".html")), files[0]))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    with start_run(cfg, "quantize", config_path, resume_run_id=run_id):
        for f in files:
            mlflow.log_artifact(str(f), "report" if Path(f).suffix in (".md", ".html") else "report/plots")
        mlflow.log_artifact(str(out / "summary.json"), "report")
        ppl = results.get("perplexity", {})
        log_step_metrics({f"{k}.perplexity": v for k, v in ppl.items() if isinstance(v, (int, float))}, step=0)
        if accuracy:
            for name, a in accuracy["variants"].items():
                log_step_metrics({f"{name}.accuracy": a["accuracy"], f"{name}.relative_drop": a["relative_drop"],
                                  f"{name}.drop_p": a["p_value"]}, step=0)
    progress(f"report: {summary['report']}")
    return {k: v for k, v in summary.items() if k != "analysis"} | {"analysis_summary": results.get("summary")}


def size_rows(source: str, source_sizes: dict[str, Any], made: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Size of each variant against the bf16 source: the whole checkpoint and the quantized layers."""
    whole = source_sizes["safetensors_bytes"]
    rows = [{"model": source, "method": "bf16", "size_mib": round(whole / 2**20, 2), "size_reduction": 0.0,
             "quantized_layer_reduction": 0.0}]
    for method, m in made.items():
        s = m["sizes"]
        rows.append({"model": m["name"], "method": method, "size_mib": round(s["safetensors_bytes"] / 2**20, 2),
                     "size_reduction": round(1 - s["safetensors_bytes"] / whole, 4),
                     "quantized_layer_reduction": round(1 - s["quantized_layer_bytes"] / s["quantized_layer_bf16_bytes"], 4)
                     if s["quantized_layer_bf16_bytes"] else 0.0,
                     "quantized_parameter_share": round(2 * s["quantized_parameters"] / whole, 4)})
    return rows


def evaluate_variants(cfg: ExperimentConfig, source: str, variants: dict[str, str], run_name: str,
                      progress: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The source and every variant through the evaluation stage; accuracy drops with paired intervals."""
    from app.eval.run import eval_root, evaluate
    from app.serving.manager import cpus_needed

    e = cfg.evaluation
    models = [source, *variants.values()]
    # A local cluster started for the evaluation must fit every model's replicas (one model's with
    # evaluation.serve_one_at_a_time) and the ingress, or the last replicas wait forever to be scheduled,
    # plus one spare: the evaluation's own Ray Data tasks run on the same cluster.
    need = cpus_needed(cfg.serving.model_copy(update={"models": models[:1] if e.serve_one_at_a_time else models})) + 1
    serving = cfg.serving.model_copy(update={"cluster_cpus": max(cfg.serving.cluster_cpus, need)})
    eval_cfg = cfg.model_copy(update={"serving": serving, "evaluation": e.model_copy(update={
        "models": models, "run_name": f"{run_name}-eval", "judge": None,
        "max_examples": cfg.quantize.eval_max_examples or e.max_examples})})
    progress(f"== evaluation of {source} and its INT4 variants (the evaluation stage, its own MLflow run)")
    result = evaluate(eval_cfg, progress=progress)
    summary = json.loads((eval_root(cfg) / f"{run_name}-eval" / "summary.json").read_text())
    return result, accuracy_drops(summary, source, list(variants.values()), e.confidence)


def accuracy_drops(summary: dict[str, Any], source: str, variants: list[str], confidence: float) -> dict[str, Any]:
    """Each variant's domain-accuracy drop against the source on the same questions: absolute and
    relative to the source's accuracy, with the paired bootstrap interval and permutation p-value."""
    src = summary["means"][source]["domain_correct"]["mean"]
    out: dict[str, Any] = {"primary_metric": "domain_accuracy", "source": source, "source_accuracy": src,
                           "confidence": confidence, "target": TARGET,
                           "test_set": (summary.get("facts") or {}).get("test_set"), "variants": {}}
    for v in variants:
        c = summary["comparisons"][v]["domain_correct"]
        drop, lo, hi = -c["difference"], -c["high"], -c["low"]  # difference is variant - source
        rel = (lambda x: x / src if src else float("nan"))
        out["variants"][v] = {"accuracy": summary["means"][v]["domain_correct"]["mean"], "drop": drop, "ci": [lo, hi],
                              "relative_drop": rel(drop), "relative_ci": [rel(lo), rel(hi)],
                              "p_value": c["p_permutation"], "n": int(c["n"]),
                              "detectable_drop": c.get("detectable")}
    return out
