"""``app train ...``: LoRA fine-tuning runs and their checkpoints."""

from __future__ import annotations

import typer
from rich.table import Table

from app.cli.common import ConfigOpt, SetOpt, console, handled, load, run_stage

train_app = typer.Typer(help="LoRA fine-tuning on Ray Train + DeepSpeed: run, tune, inspect runs.", no_args_is_help=True)


@train_app.command("run")
@handled
def train_run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Fine-tune LoRA adapters (resumes a run of the same name); export, register and compare the best."""
    console.print_json(data=run_stage("finetune", config, set_))


@train_app.command("tune")
@handled
def train_tune(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Ray Tune search over LoRA rank, alpha and learning rate (the `tune` section); prints the best as --set."""
    result = run_stage("tune_lora", config, set_)
    console.print_json(data={k: v for k, v in result.items() if k != "trials"})


@train_app.command("list")
@handled
def train_list(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Training runs under <home>/train: checkpoints kept, latest step, best checkpoint."""
    from app.train import checkpoint as ck
    from app.train.run import train_root

    cfg = load(config, set_)
    root = train_root(cfg)
    table = Table("run", "checkpoints", "latest step", "best", "metric", "output model", "finished")
    for run_dir in sorted(p for p in root.iterdir() if (p / ck.RUN_FILE).is_file()) if root.is_dir() else []:
        rec = ck.read_run(run_dir)
        ckpts = ck.list_checkpoints(run_dir)
        best = ck.best_checkpoint(run_dir, rec.get("checkpoint_metric", "val_token_f1"), rec.get("checkpoint_mode", "max"))
        metric = rec.get("checkpoint_metric", "")
        value = ck.read_state(best)["metrics"].get(metric) if best else None
        table.add_row(run_dir.name, str(len(ckpts)), str(ck.read_state(ckpts[-1])["step"]) if ckpts else "-",
                      best.name if best else "-", f"{metric} {value:.4f}" if value is not None else "-",
                      rec.get("output_model", "-"), rec.get("completed", "-"))
    console.print(table)


@train_app.command("show")
@handled
def train_show(run: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """One run's checkpoints with their step, validation metrics and files."""
    from app.train import checkpoint as ck
    from app.train.run import train_root

    cfg = load(config, set_)
    run_dir = train_root(cfg) / run
    rec = ck.read_run(run_dir)
    if not rec:
        raise ck.CheckpointError(f"no training run {run!r} under {train_root(cfg)} (see `app train list`)")
    console.print(f"{run}  MLflow run {rec.get('mlflow_run_id')}  dataset {rec.get('dataset')}", highlight=False)
    metrics = ["val_loss", "val_token_f1", "val_exact_match", "val_domain_accuracy"]
    table = Table("checkpoint", "step", "epoch", *metrics, "adapter", "optimizer state")
    for p in ck.list_checkpoints(run_dir):
        st = ck.read_state(p)
        try:
            ck.check_adapter(p)
            adapter = "ok"
        except ck.CheckpointError as exc:
            adapter = f"BAD: {exc}"
        try:
            ck.check_deepspeed_files(p, st["world_size"], st["zero_stage"])
            optim = f"ok ({st['world_size']} rank(s), ZeRO-{st['zero_stage']}, {st['precision']})"
        except ck.CheckpointError as exc:
            optim = f"BAD: {exc}"
        table.add_row(p.name, str(st["step"]), str(st.get("epoch", "")),
                      *(f"{st['metrics'][m]:.4f}" if m in st.get("metrics", {}) else "-" for m in metrics), adapter, optim)
    console.print(table)
