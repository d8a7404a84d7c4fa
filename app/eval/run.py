"""The evaluation stage: many models, one test set, every metric, intervals, paired tests, a report.

    app eval run [--set evaluation.models=[...]] [--set evaluation.test_set=questions.jsonl]
    app eval compare [RUN]

Results go to <home>/eval/<run>/: examples.parquet (one row per example: question, reference,
context, each model's answer, error and every metric), examples.jsonl (the same, for people),
summary.json (means with intervals, comparisons, breakdowns, facts), report.md, report.html and the
plots. The same tables and the report are logged to an MLflow run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from app import cluster
from app.config import ExperimentConfig
from app.datasets import latest_dataset
from app.eval.agreement import agreement, metric_correlations, model_scores
from app.eval.answer import EvalError, answer_all, prompts
from app.eval.config import EvalModel
from app.eval.human import CRITERIA, HumanEvalError, HumanEvalStore
from app.eval.judge import judge_answers
from app.eval.metrics import DomainRule, corpus_bleu, overlap_scores, score_answers
from app.eval.report import (
    METRICS,
    col,
    metrics_of,
    relative_improvement,
    summarize,
    write_report,
)
from app.eval.testset import (
    EvalDataError,
    dataset_split,
    fill_contexts,
    read_jsonl,
    sample,
)
from app.model_store import model_store
from app.serving.manager import ensure_served, remove_app
from app.tracking import connect, log_table, start_run

# Deferred imports: mlflow, transformers are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


def eval_root(cfg: ExperimentConfig) -> Path:
    return cfg.paths.resolved_home() / "eval"


def domain_definition(cfg: ExperimentConfig) -> str:
    return DomainRule.of(cfg.evaluation).describe()


def judge_definition(cfg: ExperimentConfig) -> str:
    j = cfg.evaluation.judge
    assert j is not None
    where = j.model.url or "the project's Serve app"
    return (f"correct when the judge {j.model.model_id} ({where}, greedy, at most {j.max_new_tokens} tokens) replies "
            "correct/yes to the configured prompt comparing the answer with the reference (negated or partial "
            "verdicts are incorrect); an empty answer counts as incorrect; replies without a verdict (abstentions, "
            "contradictions, no verdict word) and failed judge requests are left out and counted.")


def score(frame: pd.DataFrame, answers: list[str], cfg: ExperimentConfig) -> pd.DataFrame:
    """Every metric of one model's answers, one row per example."""
    refs = frame["reference"].tolist()
    base = pd.DataFrame(score_answers(answers, refs, DomainRule.of(cfg.evaluation)))
    return pd.concat([base, pd.DataFrame(overlap_scores(answers, refs))], axis=1)[METRICS + ["answer_words"]]


def load_test_set(cfg: ExperimentConfig, progress: Callable[[str], None]) -> tuple[pd.DataFrame, str]:
    e = cfg.evaluation
    frames, names = [], []
    if e.test_set:
        path = Path(e.test_set).expanduser().resolve()
        frames.append(read_jsonl(path))
        names.append(str(path))
    if not e.test_set or e.with_test_split:
        path = latest_dataset(cfg)
        if e.test_set:
            split = sample(dataset_split(path), e.with_test_split, cfg.seed)
            names.append(f"test split of {path.name} ({len(split)} examples)")
        else:
            parts = [dataset_split(path, s) for s in e.splits]
            split = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
            names.append(f"{' + '.join(e.splits)} split{'s' if len(parts) > 1 else ''} of {path.name}")
        frames.append(split)
    frames = [sample(f, e.max_examples, cfg.seed) for f in frames]  # max_examples from each set
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    dupes = frame["example_id"][frame["example_id"].duplicated()].unique().tolist()
    if dupes:
        raise EvalDataError(f"example ids in both {names[0]} and {names[1]}: {dupes[:5]}")
    name = " + ".join(names)
    progress(f"test set: {name}, {len(frame)} examples, {frame['topic'].nunique()} topics")
    return frame, name


def store_names(cfg: ExperimentConfig, models: list[EvalModel]) -> list[str]:
    """The store entries among ``models`` (those without a URL); EvalError naming any not in the store."""
    names = list(dict.fromkeys(m.model_id for m in models if not m.url))
    if names:
        stored = {m.name for m in model_store(cfg).list()}
        missing = [n for n in names if n not in stored]
        if missing:
            raise EvalError(f"evaluation models {missing} are not in the model store ({sorted(stored)}); fine-tune "
                            "first (`app train run`), or list other models in evaluation.models")
    return names


def served_models(cfg: ExperimentConfig, models: list[EvalModel], progress: Callable[[str], None]) -> bool:
    """Make the project's Serve app serve every store model listed; True when this call deployed it."""
    names = store_names(cfg, models)
    if not names:
        cluster.connect(cfg.ray)
        return False
    serving = cfg.serving.model_copy(update={"models": names})
    return ensure_served(cfg.model_copy(update={"serving": serving}), names, "the evaluation", progress,
                         replace_others=False)


def evaluate(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
             progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Answer the test set with every configured model, score, aggregate, report, track."""
    import mlflow
    from transformers import AutoTokenizer

    e = cfg.evaluation
    connect(cfg)
    base = model_store(cfg).resolve(cfg.model, progress=progress)
    models = e.model_list(cfg.model.name, cfg.training.output_model or f"{cfg.model.name}-lora")
    run_name = e.run_name or f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    out = eval_root(cfg) / run_name
    if out.exists() and any(out.iterdir()):
        raise EvalError(f"evaluation run {run_name} exists at {out}; pick another evaluation.run_name")
    frame, test_name = load_test_set(cfg, progress)  # bad input fails before any engine starts
    tags = {"rerun_of": rerun_of} if rerun_of else {}
    with start_run(cfg, "evaluate", config_path, run_name=run_name, tags=tags) as run:
        # Connected by now (to the Serve cluster when store models are evaluated), without the
        # cluster's log forwarding: the replicas' access logs would drown the progress lines.
        judge = [e.judge.model] if e.judge else []
        store_names(cfg, models + judge)  # every model checked before the first engine starts
        # One at a time: the first store model now, each next one after the previous is removed.
        one = e.serve_one_at_a_time
        deployed = served_models(cfg, (models[:1] if one else models) + judge, progress)
        frame, retrieval = fill_contexts(frame, cfg, base.path / "tokenizer.json", progress)
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        messages = prompts(frame, cfg, tokenizer)
        progress(f"answering {len(frame)} questions with {', '.join(m.name for m in models)}")
        table = frame.copy()
        facts_models, bleu, judged = {}, {}, {}
        try:
            for i, m in enumerate(models):
                if one and i and not m.url:
                    if deployed:
                        progress("removing the Serve app before the next model (evaluation.serve_one_at_a_time)")
                        remove_app()
                    deployed = served_models(cfg, [m] + judge, progress)
                answers, errors, facts_models[m.name] = answer_all(frame, messages, m, cfg, progress)
                table[col(m.name, "answer")], table[col(m.name, "error")] = answers, errors
                scores = score(frame, answers, cfg)
                for k in METRICS + ["answer_words"]:
                    table[col(m.name, k)] = scores[k].to_numpy()
                bleu[m.name] = corpus_bleu(answers, frame["reference"].tolist())
                if e.judge:
                    verdicts, replies, judged[m.name] = judge_answers(frame, answers, m.name, cfg, progress)
                    table[col(m.name, "judge_correct")], table[col(m.name, "judge_reply")] = verdicts, replies
        finally:
            if deployed:
                progress("removing the Serve app this evaluation deployed")
                remove_app()
        names = [m.name for m in models]
        summary = summarize(table, names, e.bootstrap_samples, e.confidence, cfg.seed, bleu)
        facts = {"run_name": run_name, "test_set": test_name, "retrieval": retrieval, "max_new_tokens": e.max_new_tokens,
                 "domain_definition": domain_definition(cfg), "models": facts_models,
                 **({"judge": {"definition": judge_definition(cfg), "per_model": judged}} if e.judge else {}),
                 "mlflow_run_id": run.info.run_id}
        summary["facts"] = facts
        out.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out / "examples.parquet", index=False)
        table.to_json(out / "examples.jsonl", orient="records", lines=True, force_ascii=False)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        files = write_report(out, summary, table, facts)
        progress(f"report: {files['markdown']} and {files['html']}")

        mlflow.log_params({"eval.models": ",".join(names), "eval.examples": len(table),
                           "eval.test_set": test_name[:250]})
        for m in names:
            for k in metrics_of(summary):
                v = summary["means"][m][k]
                mlflow.log_metrics({f"{m}.{k}": v["mean"], f"{m}.{k}_low": v["low"], f"{m}.{k}_high": v["high"]})
            mlflow.log_metric(f"{m}.bleu_corpus", bleu[m])
            if facts_models[m].get("examples_per_s"):
                mlflow.log_metric(f"{m}.examples_per_s", facts_models[m]["examples_per_s"])
        improvements = {}
        for m in names[1:]:
            rel = relative_improvement(summary, m)
            improvements[m] = rel
            c = summary["comparisons"][m]["domain_correct"]
            mlflow.log_metrics({f"{m}.domain_accuracy_diff": c["difference"], f"{m}.domain_accuracy_p": c["p_permutation"]})
            if rel is not None:
                mlflow.log_metric(f"{m}.domain_accuracy_relative", rel)
        log_table(table.drop(columns=["context"]).to_dict("records"), "eval/examples.json")
        for name in ("report.md", "report.html", "summary.json", "means.png", "topics.png"):
            mlflow.log_artifact(str(out / name), "eval")
    result = {"run_id": run.info.run_id, "run_name": run_name, "output": str(out), "examples": len(table),
              "models": names, "domain_accuracy": {m: summary["means"][m]["domain_correct"] for m in names},
              "relative_improvement": improvements,
              **({"judge_accuracy": {m: summary["means"][m]["judge_correct"] for m in names}} if e.judge else {}),
              "p_values": {m: summary["comparisons"][m]["domain_correct"]["p_permutation"] for m in names[1:]},
              "report": str(files["html"])}
    return result


def load_summary(cfg: ExperimentConfig, run: str | None) -> tuple[str, dict[str, Any]]:
    """(run name, summary) of the named evaluation run, or of the latest one."""
    root = eval_root(cfg)
    if run:
        path = root / run / "summary.json"
        if not path.is_file():
            known = sorted(p.name for p in root.glob("*/summary.json")) if root.is_dir() else []
            raise EvalError(f"no evaluation run {run!r} under {root} (runs: {[Path(k).parent.name for k in known]})")
    else:
        runs = sorted(root.glob("*/summary.json"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        if not runs:
            raise EvalError(f"no evaluation runs under {root}; run `app eval run` first")
        path = runs[-1]
    return path.parent.name, json.loads(path.read_text())


def human_store(cfg: ExperimentConfig):
    return HumanEvalStore(cfg.evaluation.human.url(cfg.paths.resolved_home()))


def create_study(cfg: ExperimentConfig, name: str, annotators: list[str], run: str | None = None) -> dict[str, Any]:
    """A human-evaluation study over an evaluation run (default: the latest)."""
    h = cfg.evaluation.human
    run_name, _ = load_summary(cfg, run)
    store = human_store(cfg)
    linked = study_accounts(cfg, annotators)
    try:
        return store.create_study(name, eval_root(cfg) / run_name, annotators, h.per_item, h.examples, cfg.seed,
                                  h.pairwise, accounts=linked)
    finally:
        store.close()


def study_accounts(cfg: ExperimentConfig, annotators: list[str]) -> dict[str, int]:
    """The annotators that are enabled accounts with the annotator role (name -> account id): they log in
    with their password; the others get a study token."""
    from app.accounts import AccountError, AccountStore

    accounts = AccountStore(cfg.accounts.url(cfg.paths.resolved_home()))
    linked = {}
    try:
        for name in annotators:
            try:
                user = accounts.get(name.strip())
            except AccountError:
                continue
            if user.can("annotator"):
                linked[user.name] = user.id
    finally:
        accounts.close()
    return linked


def human_results(cfg: ExperimentConfig, study: str, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Agreement, human scores and their correlation with the metrics; folded into the run's report and MLflow run."""
    import mlflow

    e = cfg.evaluation
    store = human_store(cfg)
    try:
        info, ratings, status = store.study(study), store.ratings(study), store.status(study)
    finally:
        store.close()
    if ratings.empty:
        raise HumanEvalError(f"study {study} has no ratings yet (annotators rate at `app eval human serve`)")
    out = Path(info["eval_run"])
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_parquet(out / "examples.parquet")
    human = {"study": study, "ratings": int(len(ratings)), "expected": status["expected"], "per_item": info["per_item"],
             "annotators": sorted(ratings["annotator"].unique().tolist()),
             "agreement": agreement(ratings, info["per_item"]),
             "scores": model_scores(ratings, info["models"], e.bootstrap_samples, e.confidence, cfg.seed),
             "correlations": metric_correlations(ratings, table)}
    (out / f"human-{study}.json").write_text(json.dumps(human, indent=2))
    ratings.to_csv(out / f"human-{study}-ratings.csv", index=False)
    files = write_report(out, summary, table, summary["facts"], human=human)
    progress(f"{len(ratings)} of {status['expected']} ratings; report updated: {files['markdown']}, {files['html']}")
    run_id = summary["facts"].get("mlflow_run_id")
    if run_id:
        connect(cfg)
        with mlflow.start_run(run_id=run_id):
            for c, a in human["agreement"].items():
                if a.get("krippendorff_alpha") is not None:
                    mlflow.log_metric(f"human.{c}.krippendorff_alpha", a["krippendorff_alpha"])
                if a.get("fleiss", {}).get("kappa") is not None:
                    mlflow.log_metric(f"human.{c}.fleiss_kappa", a["fleiss"]["kappa"])
            for m, per in human["scores"]["scores"].items():
                for c in CRITERIA:
                    if c in per:
                        mlflow.log_metric(f"human.{m}.{c}", per[c]["mean"])
            for name in (f"human-{study}.json", f"human-{study}-ratings.csv", "report.md", "report.html"):
                mlflow.log_artifact(str(out / name), "eval")
    return {"study": study, "eval_run": out.name, "report": str(files["html"]), **human}
