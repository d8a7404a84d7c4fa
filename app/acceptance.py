"""The acceptance table: every success criterion of the sprint checked against what this run of the
main job measured, each row with its figure, its threshold, pass / fail / not measured, and the
MLflow run the figure came from. Thresholds and which criteria are required are config
(``acceptance``); a required criterion that fails or was not measured makes the job exit non-zero.

The figures are read from the stages' own summaries (the same numbers the stage commands print) and,
for tracking, by listing the runs in MLflow. A criterion whose stage is not in this run says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.config import ExperimentConfig
from app.errors import AppError

PASS, FAIL, UNMEASURED = "pass", "fail", "not measured"
# Which stage measures each criterion; the command that runs it alone.
SOURCE = {"dataset_pairs": ("build_dataset", "app dataset build"),
          "validation_improvement": ("finetune", "app train run"),
          "evaluation": ("evaluate", "app eval run"), "improvement_test": ("evaluate", "app eval run"),
          "improvement_human": ("evaluate", "app eval run --set evaluation.test_set=<human-written JSONL>"),
          "quantization": ("quantize", "app quantize run"), "serving_speedup": ("benchmark", "app bench suites"),
          "ab_significance": ("ab_test", "app ab run"), "benchmark_consistency": ("benchmark", "app bench all")}
EVAL_METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "semantic_similarity", "exact_match", "token_f1",
                "domain_correct")


class AcceptanceError(AppError, RuntimeError):
    """A required acceptance criterion failed; the table says which and why."""


def _row(cid: str, criterion: str, status: str, figure: str, threshold: str, run: str | None,
         why: str = "") -> dict[str, Any]:
    return {"id": cid, "criterion": criterion, "status": status, "figure": figure, "threshold": threshold,
            "mlflow_run_id": run, "why": why}


def _not_run(cid: str, criterion: str, threshold: str) -> dict[str, Any]:
    stage, command = SOURCE[cid]
    return _row(cid, criterion, UNMEASURED, "-", threshold, None,
                f"stage {stage} is not part of this run of the main job (run `{command}`)")


def _eval_summary(result: dict[str, Any]) -> dict[str, Any] | None:
    path = Path(result.get("output") or "") / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_tracking(runs: dict[str, str | None]) -> dict[str, Any]:
    """Every stage of the run has an MLflow run holding its config and config hash (listed, not assumed)."""
    import mlflow

    from app.tracking import CONFIG_ARTIFACT, HASH_TAG

    client = mlflow.MlflowClient() if runs else None
    ok, missing = 0, []
    for stage, run_id in runs.items():
        try:
            run = client.get_run(run_id) if client and run_id else None
            files = {a.path for a in client.list_artifacts(run_id, str(Path(CONFIG_ARTIFACT).parent))} if run else set()
        except Exception:  # a run that cannot be read counts as untracked
            run, files = None, set()
        if run is not None and HASH_TAG in run.data.tags and CONFIG_ARTIFACT in files:
            ok += 1
        else:
            missing.append(stage)
    n = len(runs)
    return _row("tracking", "MLflow tracks every run with a reproducible config", PASS if n and ok == n else FAIL,
                f"{ok} of {n} stage runs have their config and its hash", "100%", None,
                f"no config logged for: {', '.join(missing)}" if missing else "")


def acceptance_table(cfg: ExperimentConfig, results: dict[str, dict[str, Any]],
                     runs: dict[str, str | None]) -> list[dict[str, Any]]:
    """The rows, from the stages' results (``results``: stage -> summary) and runs (stage -> MLflow run id)."""
    a = cfg.acceptance
    rows = [check_tracking(runs)]

    ds = results.get("build_dataset")
    crit = "quality-checked QA pairs"
    if ds is None:
        rows.append(_not_run("dataset_pairs", crit, f">= {a.min_pairs}"))
    else:
        n = sum(ds["pairs"].values())
        rows.append(_row("dataset_pairs", crit, PASS if n >= a.min_pairs else FAIL,
                         f"{n} ({', '.join(f'{k} {v}' for k, v in ds['pairs'].items())})", f">= {a.min_pairs}",
                         ds.get("run_id"), "" if n >= a.min_pairs else f"data.target_pairs or the corpus: {n} kept"))

    ft = results.get("finetune")
    crit = "measurable improvement on the validation split (domain accuracy, fine-tuned vs base)"
    if ft is None:
        rows.append(_not_run("validation_improvement", crit, "> 0"))
    elif "validation_comparison" not in ft:
        rows.append(_row("validation_improvement", crit, UNMEASURED, "-", "> 0", ft.get("run_id"),
                         "training.compare_on_validation is off"))
    else:
        v = ft["validation_comparison"]
        b, f = v["domain_accuracy"]["base"], v["domain_accuracy"]["finetuned"]
        rows.append(_row("validation_improvement", crit, PASS if f > b else FAIL,
                         f"{b:.3f} -> {f:.3f} ({f - b:+.3f}, n={v['examples']})", "> 0", ft.get("run_id"),
                         "" if f > b else "the fine-tuned model is not better on the validation split"))

    ev = results.get("evaluate")
    summary = _eval_summary(ev) if ev else None
    crit = "comprehensive evaluation: BLEU, ROUGE, semantic similarity, EM/F1, domain accuracy, with 95% intervals"
    if ev is None:
        rows.append(_not_run("evaluation", crit, "all present"))
    elif summary is None:
        rows.append(_row("evaluation", crit, FAIL, "-", "all present", ev.get("run_id"),
                         f"no summary.json under {ev.get('output')}"))
    else:
        means = summary["means"][summary["reference"]]
        missing = [k for k in EVAL_METRICS if k not in means or "low" not in means[k]]
        rows.append(_row("evaluation", crit, FAIL if missing else PASS,
                         f"{len(EVAL_METRICS) - len(missing)} of {len(EVAL_METRICS)} metrics with intervals on "
                         f"{summary['examples']} questions, {len(summary['models'])} models", "all present",
                         ev.get("run_id"), f"missing: {missing}" if missing else ""))

    thr = f">= {a.min_relative_improvement:+.0%} relative, paired 95% CI of the difference > 0"
    for cid, origin, crit in (("improvement_test", None, "fine-tuned over base, primary accuracy, test split"),
                              ("improvement_human", "human", "fine-tuned over base, primary accuracy, "
                                                             "human-written held-out questions")):
        if summary is None or len(summary["models"]) < 2:
            rows.append(_not_run(cid, crit, thr) if ev is None else _row(
                cid, crit, UNMEASURED, "-", thr, ev.get("run_id"), "the evaluation compared fewer than two models"))
            continue
        cand = summary["models"][1]
        if origin is None:
            c = summary["comparisons"][cand]["domain_correct"]
            n = summary["examples"]
        else:
            c = ((summary.get("comparisons_by_origin") or {}).get(origin) or {}).get(cand, {}).get("domain_correct")
            n = c.get("n") if c else 0
            if not c:
                rows.append(_row(cid, crit, UNMEASURED, "-", thr, ev.get("run_id"),
                                 "the test set has no human-written questions (the default corpus's split is "
                                 "extracted and LLM-written; give evaluation.test_set a human-written JSONL, as "
                                 "benchmarks/human_faq.py does)"))
                continue
        rel = c["difference"] / c["mean_a"] if c["mean_a"] else None
        ok = rel is not None and rel >= a.min_relative_improvement and c["low"] > 0
        rows.append(_row(cid, crit, PASS if ok else FAIL,
                         f"{c['mean_a']:.3f} -> {c['mean_b']:.3f} ({'-' if rel is None else f'{rel:+.1%}'} relative; "
                         f"difference {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], n={n})", thr,
                         ev.get("run_id"), "" if ok else "below the threshold or the interval includes 0"))

    rows.append(quantization_row(a, results.get("quantize")))
    suites = _suites(results.get("benchmark"))
    rows.append(serving_speedup_row(a, results.get("benchmark"), suites))
    rows.append(ab_row(a, results.get("ab_test")))
    rows.append(consistency_row(results.get("benchmark"), suites))
    for r in rows:
        r["required"] = r["id"] in a.required
    return rows


def quantization_row(a: Any, q: dict[str, Any] | None) -> dict[str, Any]:
    """Each INT4 variant's whole-checkpoint size reduction and relative accuracy drop (point estimate, with its
    paired 95% interval shown); met when one variant meets both."""
    crit = "INT4: checkpoint size reduction and relative accuracy drop against the bf16 fine-tuned model"
    thr = f">= {a.min_size_reduction:.0%} smaller, < {a.max_relative_drop:.0%} relative drop"
    if q is None:
        return _not_run("quantization", crit, thr)
    acc = (q.get("accuracy") or {}).get("variants") or {}
    sizes = {r["model"]: r for r in q.get("sizes", [])}
    if not acc:
        return _row("quantization", crit, UNMEASURED, "-", thr, q.get("run_id"), "quantize.evaluate is off")
    parts, ok, notes = [], False, []
    for name, v in acc.items():
        red = sizes.get(name, {}).get("size_reduction")
        lo, hi = v["relative_ci"]
        met = red is not None and red >= a.min_size_reduction and v["relative_drop"] < a.max_relative_drop
        ok = ok or met
        parts.append(f"{name}: {red:.0%} smaller, relative drop {v['relative_drop']:+.1%} [{lo:+.1%}, {hi:+.1%}] "
                     f"(accuracy {v['accuracy']:.3f}, n={v['n']})" if red is not None else f"{name}: size unknown")
        if met and hi >= a.max_relative_drop:
            notes.append(f"{name}'s interval reaches {hi:+.1%}: at n={v['n']} a drop under "
                         f"{a.max_relative_drop:.0%} is the point estimate, not established")
        elif not met:
            why = []
            if red is not None and red < a.min_size_reduction:
                why.append(f"{red:.0%} smaller")
            if v["relative_drop"] >= a.max_relative_drop:
                undecided = ", which also includes drops under the threshold: n is too small to tell" \
                    if lo < a.max_relative_drop else ""
                why.append(f"relative drop {v['relative_drop']:+.1%} (interval [{lo:+.1%}, {hi:+.1%}]{undecided})")
            notes.append(f"{name}: {', '.join(why) or 'size unknown'}")
    return _row("quantization", crit, PASS if ok else FAIL, "; ".join(parts), thr, q.get("run_id"),
                "; ".join(notes) if ok else "no variant is both small enough and within the drop: " + "; ".join(notes))


def _suites(bench: dict[str, Any] | None) -> dict[str, Any]:
    """This run's suites (the benchmark stage's own suites.json), by name."""
    folder = (bench or {}).get("suites")
    path = Path(folder) / "suites.json" if folder else None
    return json.loads(path.read_text(encoding="utf-8"))["suites"] if path and path.is_file() else {}


def serving_speedup_row(a: Any, bench: dict[str, Any] | None, suites: dict[str, Any]) -> dict[str, Any]:
    crit = "tuned serving over vLLM's defaults: best output throughput under the p95 latency SLO"
    thr = f">= {a.min_serving_speedup:+.0%}, beyond the rounds' spread"
    if bench is None:
        return _not_run("serving_speedup", crit, thr)
    res = suites.get("tuned_vs_default") or {}
    rows = res.get("rows") or []
    if res.get("status") != "ok" or not rows or rows[0].get("ratio") is None:
        why = res.get("reason") or res.get("error") or "bench.suites.run has no tuned_vs_default"
        return _row("serving_speedup", crit, UNMEASURED, "-", thr, res.get("mlflow_run_id"), str(why)[:300])
    r = rows[0]
    gain = r["ratio"] - 1
    ok = gain >= a.min_serving_speedup and bool(r.get("beyond_noise"))
    spread = r.get("spread")
    return _row("serving_speedup", crit, PASS if ok else FAIL,
                f"x{r['ratio']:.3f} ({r['candidate']:.0f} vs {r['baseline']:.0f} tok/s; rounds' spread "
                f"{'[%.3f, %.3f]' % tuple(spread) if spread else 'none'})", thr, res.get("mlflow_run_id"),
                "" if ok else ("below the threshold" if gain < a.min_serving_speedup else "not beyond the spread")
                + (f"; the worst round pairing is x{spread[0]:.3f}" if spread else ""))


def ab_row(a: Any, ab: dict[str, Any] | None) -> dict[str, Any]:
    """The experiment's decision: significant (p < alpha) with feedback the simulated users give on the answers
    they got (app.ab.simulate: the evaluation's rule on each answer, with ab.simulation.noise), not an injected effect."""
    crit = "A/B test: a significant winner, with feedback that depends on the answers served"
    thr = f"p < {a.ab_alpha}"
    if ab is None:
        return _not_run("ab_significance", crit, thr)
    decisions = (ab.get("report") or {}).get("decisions") or {}
    if not decisions:
        return _row("ab_significance", crit, UNMEASURED, "-", thr, ab.get("mlflow_run_id"), "no decision recorded")
    parts, ok = [], False
    for arm, d in decisions.items():
        p = d.get("p_value")
        met = d["outcome"] == "winner" and p is not None and p < a.ab_alpha
        ok = ok or met
        parts.append(f"{arm}: {d['outcome']}" + (f" {d['winner']}" if d.get("winner") else "")
                     + (f", p = {p:.3g}" if p is not None else "") + (f" ({d['reasons'][0]})" if d.get("reasons") else ""))
    return _row("ab_significance", crit, PASS if ok else FAIL, "; ".join(parts), thr, ab.get("mlflow_run_id"),
                "" if ok else "no significant winner within ab.simulation's budget")


# The suites that compare an optimized configuration with its baseline; their first row is the primary figure.
OPTIMIZED = ("tuned_vs_default", "vllm_vs_hf", "int4_vs_bf16")


def consistency_row(bench: dict[str, Any] | None, suites: dict[str, Any]) -> dict[str, Any]:
    """Every optimized configuration this run measured: no row worse than its baseline beyond the measured noise,
    and the primary row better beyond it."""
    crit = "every optimized configuration no worse than its baseline beyond noise on every metric, better on the primary"
    thr = "all measured pairs"
    if bench is None:
        return _not_run("benchmark_consistency", crit, thr)
    parts, failed, run = [], [], None
    for name in OPTIMIZED:
        res = suites.get(name) or {}
        rows = [r for r in res.get("rows") or [] if r.get("ratio") is not None]
        if res.get("status") != "ok" or not rows:
            continue
        run = run or res.get("mlflow_run_id")
        worse = [r["figure"] for r in rows if r.get("beyond_noise") and (r["ratio"] > 1) != r["higher_is_better"]]
        first = rows[0]
        better = bool(first.get("beyond_noise")) and (first["ratio"] > 1) == first["higher_is_better"]
        if worse or not better:
            failed.append(name)
        parts.append(f"{name}: primary {first['figure']} x{first['ratio']:.3f} "
                     f"({'better' if better else 'not better'} beyond noise); worse: {', '.join(worse) or 'none'}")
    if not parts:
        return _row("benchmark_consistency", crit, UNMEASURED, "-", thr, (bench or {}).get("mlflow_run_id"),
                    f"no optimized pair measured (bench.suites.run: {', '.join(OPTIMIZED)})")
    return _row("benchmark_consistency", crit, FAIL if failed else PASS, "; ".join(parts), thr, run,
                f"inconsistent: {', '.join(failed)}" if failed else "")


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["criterion", "result", "figure", "threshold", "required", "MLflow run", "why"]
    lines = ["# Acceptance", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        status = r["status"] if r["status"] == PASS else f"**{r['status']}**"
        lines.append("| " + " | ".join([r["criterion"], status, r["figure"], r["threshold"],
                                        "yes" if r["required"] else "no", r["mlflow_run_id"] or "-",
                                        r["why"] or ""]) + " |")
    return "\n".join(lines) + "\n"


def failed_required(rows: list[dict[str, Any]], stages: list[str]) -> list[dict[str, Any]]:
    """Required rows that failed, or were not measured although the stage that measures them ran
    (a partial run, `--to` or `--only`, is not failed for what it left out)."""
    return [r for r in rows if r["required"] and (
        r["status"] == FAIL or (r["status"] == UNMEASURED and r["id"] in SOURCE and SOURCE[r["id"]][0] in stages))]
