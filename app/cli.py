"""The ``app`` command line. Each command validates the config first, then calls one function."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from app.config import ConfigError, ExperimentConfig, load_config

# Rich wraps tables at 80 columns when output is not a terminal (CI logs, pipes): too narrow
# for run ids and paths.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

app = typer.Typer(help="Customize an LLM for a domain knowledge base on Ray, and prove it helped.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Show and validate experiment configs.", no_args_is_help=True)
model_app = typer.Typer(help="The local model store.", no_args_is_help=True)
tracking_app = typer.Typer(help="The MLflow tracking server.", no_args_is_help=True)
runs_app = typer.Typer(help="Tracked runs: list and compare.", no_args_is_help=True)
serve_app = typer.Typer(help="Serve store models with vLLM on Ray Serve (OpenAI-compatible).", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(tracking_app, name="tracking")
app.add_typer(runs_app, name="runs")
app.add_typer(serve_app, name="serve")
dataset_app = typer.Typer(help="The domain QA dataset: build, inspect, review.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
train_app = typer.Typer(help="LoRA fine-tuning on Ray Train + DeepSpeed: run, tune, inspect runs.", no_args_is_help=True)
app.add_typer(train_app, name="train")
eval_app = typer.Typer(help="Evaluation: many models on one test set, intervals, paired tests, reports.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Experiment YAML (default: built-in defaults).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override, e.g. --set training.lr=1e-4 (repeatable).")]


def fail(message: str, code: int = 1) -> None:
    from rich.markup import escape

    # Messages quote user input and lists ("['a']"): never read them as Rich markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the app's own errors into a clear message and a non-zero exit, not a traceback."""
    from app.data.schema import DatasetError
    from app.data.review import ReviewError
    from app.data.splits import LeakageError
    from app.model_store import ModelStoreError
    from app.serving.manager import ServeError
    from app.tracking import TrackingError
    from app.train.checkpoint import CheckpointError
    from app.train.run import TrainingError
    from app.eval.answer import EvalError
    from app.eval.testset import EvalDataError
    from app.eval.human import HumanEvalError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), code=2)
        except (ModelStoreError, TrackingError, ServeError, DatasetError, LeakageError, ReviewError, TrainingError,
                CheckpointError, EvalError, EvalDataError, HumanEvalError) as exc:
            fail(str(exc))

    return wrapper


def _load(config: Path | None, overrides: list[str] | None) -> ExperimentConfig:
    return load_config(config, overrides or [])


def _say(message: str) -> None:
    """A stage's progress line, printed as is (no Rich markup or highlighting)."""
    console.print(message, highlight=False, markup=False)


def _run_stage(stage: Callable[..., dict[str, Any]], config: Path | None, overrides: list[str] | None) -> dict[str, Any]:
    return stage(_load(config, overrides), config, progress=_say)


# -- config -------------------------------------------------------------------------------------


@config_app.command("show")
@handled
def config_show(config: ConfigOpt = None, set_: SetOpt = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the resolved config (defaults + file + overrides) and its content hash."""
    cfg = _load(config, set_)
    console.print(json.dumps(cfg.to_dict(), indent=2) if as_json else cfg.to_yaml(), highlight=False, markup=False)
    console.print(f"# config hash: {cfg.content_hash()}", highlight=False, markup=False)


@config_app.command("validate")
@handled
def config_validate(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Validate a config; also check LoRA target modules against the model if it is in the store."""
    from app.model_store import ModelStoreError, check_target_modules
    from app.stages import model_store

    cfg = _load(config, set_)
    store = model_store(cfg)
    try:
        stored = store.get(cfg.model.name)
    except ModelStoreError:
        console.print(f"valid (hash {cfg.content_hash()[:12]}); LoRA target modules not checked: model "
                      f"{cfg.model.name!r} is not in the store yet (`app model prepare`)")
        return
    check_target_modules(cfg.lora.target_modules, stored.path)
    console.print(f"valid (hash {cfg.content_hash()[:12]}); LoRA target modules exist in {cfg.model.name}")


# -- model store --------------------------------------------------------------------------------


@model_app.command("prepare")
@handled
def model_prepare(config: ConfigOpt = None, set_: SetOpt = None,
                  force: bool = typer.Option(False, help="Rebuild the store entry even if present.")) -> None:
    """Put the configured base model into the store, probe it on a Ray worker, track it in MLflow."""
    from app.stages import model_store, prepare_model

    cfg = _load(config, set_)
    if force:
        model_store(cfg).prepare(cfg.model, force=True)
    summary = prepare_model(cfg, config)
    console.print_json(data=summary)


@model_app.command("list")
@handled
def model_list(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Models in the store."""
    from app.stages import model_store

    cfg = _load(config, set_)
    table = Table("name", "kind", "source / parent", "path", "created")
    for m in model_store(cfg).list():
        table.add_row(m.name, m.kind, str(m.manifest.get("source") or m.manifest.get("parent") or ""), str(m.path),
                      m.manifest.get("created", ""))
    console.print(table)


@model_app.command("verify")
@handled
def model_verify(name: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Check a stored model's files against the sha256 digests in its manifest."""
    from app.stages import model_store

    cfg = _load(config, set_)
    m = model_store(cfg).get(name, verify=True)
    console.print(f"{name}: {len(m.manifest.get('files', {}))} files match their digests")


@model_app.command("ask")
@handled
def model_ask(question: str, config: ConfigOpt = None, set_: SetOpt = None,
              max_new_tokens: int = typer.Option(64, min=1)) -> None:
    """Greedy answer from the configured model (Hugging Face generate; a quick check, not serving)."""
    from app.generate import answer_questions
    from app.stages import model_store

    cfg = _load(config, set_)
    stored = model_store(cfg).resolve(cfg.model)
    a = answer_questions(stored.path, [question], max_new_tokens, cfg.model.dtype)[0]
    console.print(a.answer, highlight=False, markup=False)


# -- tracking -------------------------------------------------------------------------------------


@tracking_app.command("up")
@handled
def tracking_up(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Start the local MLflow server (SQLite backend, local artifact root) if it is not running."""
    from app.tracking import ensure_server

    cfg = _load(config, set_)
    uri = ensure_server(cfg.tracking, cfg.paths.resolved_home())
    console.print(f"MLflow tracking server: {uri}")


@tracking_app.command("status")
@handled
def tracking_status(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Where runs are tracked and whether the server answers."""
    from app.tracking import server_status

    cfg = _load(config, set_)
    console.print_json(data=server_status(cfg.tracking, cfg.paths.resolved_home()))


@tracking_app.command("down")
@handled
def tracking_down(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Stop the local MLflow server this app started (the database and artifacts stay)."""
    from app.tracking import stop_server

    cfg = _load(config, set_)
    console.print("stopped" if stop_server(cfg.paths.resolved_home()) else "no server started by this app")


# -- runs -------------------------------------------------------------------------------------------


@runs_app.command("list")
@handled
def runs_list(config: ConfigOpt = None, set_: SetOpt = None, limit: int = typer.Option(20, min=1)) -> None:
    """Recent runs of the configured experiment."""
    import mlflow

    from app.tracking import HASH_TAG, STAGE_TAG, connect

    cfg = _load(config, set_)
    connect(cfg)
    df = mlflow.search_runs(experiment_names=[cfg.tracking.experiment or cfg.name], max_results=limit)
    table = Table("run id", "name", "stage", "status", "config hash", "started")
    for _, r in df.iterrows():
        table.add_row(r["run_id"], str(r.get("tags.mlflow.runName", "")), str(r.get(f"tags.{STAGE_TAG}", "")),
                      r["status"], str(r.get(f"tags.{HASH_TAG}", ""))[:12], str(r["start_time"])[:19])
    console.print(table)


@runs_app.command("compare")
@handled
def runs_compare(run_ids: list[str], config: ConfigOpt = None, set_: SetOpt = None,
                 out: Optional[Path] = typer.Option(None, help="Plot file (default: <home>/reports/compare-<ids>.png)."),
                 all_params: bool = typer.Option(False, help="Show every param, not only those that differ.")) -> None:
    """Side-by-side table of runs (config, params that differ, metrics) and a plot of their metrics."""
    from app.runs import compare_runs, plot_comparison
    from app.tracking import connect

    cfg = _load(config, set_)
    connect(cfg)
    comp = compare_runs(run_ids, all_params=all_params)
    table = Table("", *comp.header)
    for row in comp.rows:
        table.add_row(*row)
    console.print(table)
    target = out or cfg.paths.resolved_home() / "reports" / f"compare-{'-'.join(h for h in comp.header)}.png"
    console.print(f"plot: {plot_comparison(comp, target)}")


# -- serving ------------------------------------------------------------------------------------------


@serve_app.command("config")
@handled
def serve_config(config: ConfigOpt = None, set_: SetOpt = None,
                 out: Path = typer.Option(Path("serve_configs/local.yaml"), help="Serve config file to write.")) -> None:
    """Write the Serve config (for `serve run` / `serve deploy`) generated from the experiment config."""
    import yaml

    from app.serving.builder import serve_config_dict

    cfg = _load(config, set_)
    # Keep `~` unexpanded so the file works for whoever deploys it.
    body = serve_config_dict(os.environ.get("DOMAIN_LLM_HOME") or cfg.paths.home, cfg.serving)
    header = (f"# Generated by `app serve config` from {config or 'the defaults'} (hash {cfg.content_hash()[:12]}).\n"
              f"#   serve run {out}        # foreground, local\n#   serve deploy {out}     # to a running cluster\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(body, sort_keys=False))
    console.print(f"wrote {out}")


@serve_app.command("up")
@handled
def serve_up(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Deploy every model in serving.models on one endpoint; wait until each answers."""
    from app.serving.manager import up

    console.print_json(data=up(_load(config, set_)))


@serve_app.command("check")
@handled
def serve_check(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run the correctness gate against the running endpoint (one started by `serve run` too)."""
    import httpx

    from app.serving.manager import ServeError, base_url, check_gate

    cfg = _load(config, set_)
    try:
        summary = check_gate(cfg.paths.resolved_home(), cfg.serving, progress=_say)
    except httpx.HTTPError as exc:
        raise ServeError(f"no endpoint answers at {base_url(cfg.serving)} ({exc}); start it with `app serve up`") from None
    console.print_json(data=summary)


@serve_app.command("sweep")
@handled
def serve_sweep(config: ConfigOpt = None, set_: SetOpt = None,
                write: Path | None = typer.Option(None, help="Also copy the winner's Serve config here, "
                                                  "e.g. serve_configs/tuned.yaml.")) -> None:
    """Deploy each serving setting of serve_sweep, load it at rising concurrency, keep the best under the SLO."""
    import shutil

    from app.serving.sweep import run_sweep

    result = run_sweep(_load(config, set_), config, progress=_say)
    console.print_json(data=result)
    if result.get("winner") is None:
        fail(result["message"])
    if write:
        write.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result["tuned_serve_config"], write)
        console.print(f"wrote {write}")


@serve_app.command("status")
@handled
def serve_status(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Serve's view of the application, its deployments and replicas."""
    from app.serving.manager import attach, status_text

    if not attach(_load(config, set_)):
        fail("no Ray cluster running (start one with `app serve up` or `ray start --head`)")
    console.print(status_text(), highlight=False, markup=False)


@serve_app.command("down")
@handled
def serve_down(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Remove the application (the Ray cluster stays; `ray stop` ends it)."""
    from app.serving.manager import down

    console.print("removed" if down(_load(config, set_)) else "nothing to remove: no Ray cluster or no Serve on it")


@serve_app.command("stats")
@handled
def serve_stats(config: ConfigOpt = None, set_: SetOpt = None,
                metrics_url: str = typer.Option("http://127.0.0.1:8080/metrics", help="A Ray node's metrics endpoint."),
                watch: float = typer.Option(0, help="Refresh every N seconds (0: once)."),
                interval: float = typer.Option(2.0, help="Seconds between the two scrapes that give rates.")) -> None:
    """Live serving summary from Ray's Prometheus metrics: latency, throughput, queue, KV cache, memory."""
    import time

    from app.serving.monitor import render, sample

    _load(config, set_)
    while True:
        console.print(render(sample(metrics_url, interval)))
        if not watch:
            break
        time.sleep(watch)


# -- dataset ----------------------------------------------------------------------------------


@dataset_app.command("build")
@handled
def dataset_build(config: ConfigOpt = None, set_: SetOpt = None,
                  docs: Optional[Path] = typer.Option(None, "--docs", help="Folder of your documents (sets data.docs_dir).")) -> None:
    """Build the QA dataset: chunks, extracted + LLM pairs, quality checks, reviews, leak-free splits."""
    from app.stages import build_dataset

    cfg = _load(config, set_)
    if docs:  # assigned, not passed as an override: a path is not YAML ("#", ": " would be parsed)
        cfg.data.docs_dir = str(docs.expanduser().resolve())
    console.print_json(data=build_dataset(cfg, config))


@dataset_app.command("show")
@handled
def dataset_show(config: ConfigOpt = None, set_: SetOpt = None,
                 version: Optional[str] = typer.Option(None, help="A version folder name; default: the latest build.")) -> None:
    """Counts, yield per generator and reject reasons of a build (its manifest)."""
    from app.data.build import datasets_root, latest_dataset
    from app.data.schema import DatasetError

    cfg = _load(config, set_)
    path = datasets_root(cfg) / version if version else latest_dataset(cfg)
    if not (path / "manifest.json").is_file():
        raise DatasetError(f"no manifest at {path}")
    m = json.loads((path / "manifest.json").read_text())
    console.print(f"{m['name']} {m['version']}  ({path})", highlight=False)
    table = Table("generator", "candidates", "accepted", "yield", "top reject reasons")
    for gen, st in m["quality"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in list(st["reject_reasons"].items())[:3])
        table.add_row(gen, str(st["candidates"]), str(st["accepted"]), f"{st['yield']:.1%}", reasons)
    console.print(table)
    splits = Table("topic", *m["counts"]["splits"])
    for topic, counts in sorted(m["counts"]["per_topic"].items()):
        splits.add_row(topic, *(str(counts.get(s, 0)) for s in m["counts"]["splits"]))
    splits.add_row("total", *(str(n) for n in m["counts"]["splits"].values()))
    console.print(splits)
    console.print(f"leakage overlaps: {m['leakage']['overlaps']}; skipped files: {len(m['documents']['skipped'])}")


@dataset_app.command("export-corpus")
@handled
def dataset_export_corpus(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Write the embedded knowledge base (Python's own docs) as Markdown files and print the folder."""
    from app.data.corpus import ensure_default_corpus

    cfg = _load(config, set_)
    console.print(str(ensure_default_corpus(cfg.paths.resolved_home())), highlight=False)


# -- training ---------------------------------------------------------------------------------


@train_app.command("run")
@handled
def train_run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Fine-tune LoRA adapters (resumes a run of the same name); export, register and compare the best."""
    from app.stages import finetune

    console.print_json(data=_run_stage(finetune, config, set_))


@train_app.command("tune")
@handled
def train_tune(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Ray Tune search over LoRA rank, alpha and learning rate (the `tune` section); prints the best as --set."""
    from app.stages import tune_lora

    result = _run_stage(tune_lora, config, set_)
    console.print_json(data={k: v for k, v in result.items() if k != "trials"})


@train_app.command("list")
@handled
def train_list(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Training runs under <home>/train: checkpoints kept, latest step, best checkpoint."""
    from app.train import checkpoint as ck
    from app.train.run import train_root

    cfg = _load(config, set_)
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

    cfg = _load(config, set_)
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


# -- evaluation -------------------------------------------------------------------------------------


@eval_app.command("run")
@handled
def eval_run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Answer the test set (or evaluation.test_set) with every model; metrics, intervals, paired tests, report."""
    from app.stages import evaluate

    console.print_json(data=_run_stage(evaluate, config, set_))


@eval_app.command("compare")
@handled
def eval_compare(run: Annotated[Optional[str], typer.Argument(help="Evaluation run (default: the latest).")] = None,
                 config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Side-by-side table of an evaluation run: every metric per model with intervals, and the paired tests."""
    from app.eval.report import tables
    from app.eval.run import load_summary

    cfg = _load(config, set_)
    name, summary = load_summary(cfg, run)
    t = tables(summary)
    console.print(f"evaluation {name}: {summary['examples']} examples, {summary['confidence']:.0%} bootstrap "
                  f"intervals, paired tests against {summary['reference']}", highlight=False)
    for title, key in (("metrics", "means"), ("paired comparisons", "comparisons"), ("by topic", "by_topic")):
        df = t[key]
        table = Table(*map(str, df.columns), title=title)
        for row in df.itertuples(index=False):
            table.add_row(*map(str, row))
        console.print(table)


human_app = typer.Typer(help="Human evaluation: studies, the rating page, agreement.", no_args_is_help=True)
eval_app.add_typer(human_app, name="human")


@human_app.command("create")
@handled
def human_create(study: str, annotators: Annotated[str, typer.Option(help="Comma-separated annotator names.")],
                 run: Annotated[Optional[str], typer.Option(help="Evaluation run (default: the latest).")] = None,
                 config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """A blind study over an evaluation run's answers; prints each annotator's login token (shown once)."""
    from app.eval.run import create_study

    cfg = _load(config, set_)
    console.print_json(data=create_study(cfg, study, [a for a in annotators.split(",") if a.strip()], run))


@human_app.command("serve")
@handled
def human_serve(config: ConfigOpt = None, set_: SetOpt = None,
                host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: all)."),
                port: int = typer.Option(8766, min=1, max=65535, help="TCP port.")) -> None:
    """Serve the rating page until Ctrl-C."""
    from app.eval.human_web import serve
    from app.eval.run import human_store

    cfg = _load(config, set_)
    store = human_store(cfg)
    console.print(f"ratings database: {store.url}\nrating page: http://{host}:{port}/login", highlight=False, markup=False)
    serve(store, host, port)


@human_app.command("status")
@handled
def human_status(study: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Ratings done per annotator."""
    from app.eval.run import human_store

    console.print_json(data=human_store(_load(config, set_)).status(study))


@human_app.command("report")
@handled
def human_report(study: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Agreement (Krippendorff, Cohen, Fleiss), human scores per model, correlation with the metrics; into the report."""
    from app.eval.run import human_results

    result = human_results(_load(config, set_), study, progress=_say)
    console.print_json(data={k: result[k] for k in ("study", "eval_run", "report", "ratings", "annotators", "agreement")})


def _mount_review() -> None:
    from app.data.review_cli import review_app

    dataset_app.add_typer(review_app, name="review", help="Human review of QA pairs: web page, JSONL export/import.")


_mount_review()


@app.command("rerun")
@handled
def rerun(run_id: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run a tracked stage again with the identical config (read back from the run's artifacts).

    --config/--set here only say where the tracking server is; the stage uses the run's own config.
    """
    from app.stages import STAGES
    from app.tracking import connect, git_state, load_run_config

    connect(_load(config, set_))
    cfg, tags, config_file = load_run_config(run_id)
    stage = tags["app.stage"]
    if stage not in STAGES:
        fail(f"run {run_id} is of stage {stage!r}, which this version cannot run (known: {', '.join(STAGES)})")
    now = git_state()["commit"]
    if tags.get("git.commit") not in (None, "unknown", now):
        err_console.print(f"[yellow]note:[/] run {run_id} was made at commit {tags['git.commit'][:10]}, "
                          f"this checkout is at {now[:10]}")
    summary = STAGES[stage](cfg, config_file, rerun_of=run_id)
    console.print_json(data=summary)


@app.command("run")
@handled
def run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The main job: every stage built so far, in order (same as jobs/pipeline.py)."""
    from app.stages import run_pipeline

    cfg = _load(config, set_)
    for summary in run_pipeline(cfg, config):
        console.print_json(data=summary)


def main() -> None:
    # Progress lines must show up as they happen in logs and pipes too (block-buffered otherwise).
    sys.stdout.reconfigure(line_buffering=True)
    app()


if __name__ == "__main__":
    sys.exit(main())
