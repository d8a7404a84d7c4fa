"""Aggregates of an evaluation and its report (Markdown and HTML with plots).

The per-example table has one row per test example and, per model ``m``, the columns ``m__answer``,
``m__error`` and ``m__<metric>`` for every metric in :data:`METRICS` (with an LLM judge also
``m__judge_correct``, NaN where the judge gave no verdict, and ``m__judge_reply``). From it:
* every model's mean of every metric with a bootstrap confidence interval;
* every model against the first (the reference) on the same examples: mean difference, its
  interval, paired bootstrap and sign-flip permutation p-values, Holm-adjusted across metrics;
* domain accuracy (with its interval), token F1, semantic similarity and answer length per topic and
  per origin (who wrote the question: extracted from the text by rule, LLM-written, human-written),
  because a headline over a test split that is mostly extracted pairs says little about the
  questions people ask.
"""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.eval.human import CRITERIA
from app.eval.stats import bootstrap_ci, holm, paired_comparison

# Deferred imports: matplotlib is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

METRICS = ["domain_correct", "exact_match", "token_f1", "semantic_similarity", "reference_coverage", "bleu", "rouge1",
           "rouge2", "rougeL"]
LABELS = {"domain_correct": "domain accuracy", "exact_match": "exact match", "token_f1": "token F1",
          "reference_coverage": "reference coverage (content-word recall)",
          "semantic_similarity": "semantic similarity", "bleu": "BLEU (sentence)", "rouge1": "ROUGE-1",
          "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "judge_correct": "LLM-judge accuracy"}
OPTIONAL_METRICS = ["judge_correct"]  # present when evaluation.judge is set
ORIGIN_METRICS = ["semantic_similarity", "token_f1", "domain_correct"]  # paired again within each origin


def col(model: str, metric: str) -> str:
    return f"{model}__{metric}"


def table_metrics(table: pd.DataFrame) -> list[str]:
    """The metrics a per-example table holds: every one of METRICS, and the optional ones it has."""
    return METRICS + [k for k in OPTIONAL_METRICS if any(c.endswith(f"__{k}") for c in table.columns)]


def metrics_of(summary: dict[str, Any]) -> list[str]:
    return summary.get("metrics", METRICS)


def summarize(table: pd.DataFrame, models: list[str], samples: int, confidence: float, seed: int,
              corpus_bleu: dict[str, float] | None = None) -> dict[str, Any]:
    """Means with intervals, paired comparisons against models[0], and per-topic/origin breakdowns."""
    metrics = table_metrics(table)
    means = {m: {k: _mean(table[col(m, k)], k, samples, confidence, seed) for k in metrics} for m in models}
    comparisons = {}
    ref = models[0]
    for m in models[1:]:
        per = {k: _paired(table[col(ref, k)], table[col(m, k)], k, samples, confidence, seed) for k in metrics}
        tested = [k for k in metrics if not math.isnan(per[k]["p_permutation"])]
        adjusted = dict(zip(tested, holm([per[k]["p_permutation"] for k in tested])))
        for k in metrics:
            per[k]["p_holm"] = adjusted.get(k, math.nan)
        comparisons[m] = per
    breakdown = {by: _breakdown(table, models, by, samples, confidence, seed) for by in ("topic", "origin")}
    # The paired tests again within each origin: a headline over mostly extracted questions can hide
    # the opposite result on the human-written ones.
    by_origin = {}
    if table["origin"].nunique() > 1:
        for origin, group in table.groupby("origin", sort=True):
            by_origin[str(origin)] = {m: {k: paired_comparison(group[col(ref, k)], group[col(m, k)], samples, confidence,
                                                               seed).as_dict() for k in ORIGIN_METRICS}
                                      for m in models[1:]}
    return {"examples": int(len(table)), "models": models, "metrics": metrics, "reference": ref, "confidence": confidence,
            "bootstrap_samples": samples, "means": means, "corpus_bleu": corpus_bleu or {},
            "comparisons": comparisons, "comparisons_by_origin": by_origin, "breakdown": breakdown,
            "answer_words": {m: float(table[col(m, "answer_words")].mean()) for m in models
                             if col(m, "answer_words") in table},
            "request_errors": {m: int((table[col(m, "error")] != "").sum()) for m in models},
            **({"judge_excluded": {m: int(table[col(m, "judge_correct")].isna().sum()) for m in models}}
               if "judge_correct" in metrics else {})}


# An optional metric may have no value for an example (NaN): the judge gave no verdict on it (abstained,
# contradicted itself, said nothing readable) or its request failed. Such examples are left out of that
# metric's mean and of its paired comparisons (which use the examples both models have a value for);
# the summary counts them (judge_excluded). The other metrics have a value for every example.
_NO_COMPARISON = {**dict.fromkeys(["mean_a", "mean_b", "difference", "low", "high", "p_bootstrap", "p_permutation",
                                   "detectable"], math.nan), "n": 0, "wins_b": 0, "wins_a": 0}


def _mean(values: pd.Series, metric: str, samples: int, confidence: float, seed: int) -> dict[str, float]:
    if metric in OPTIONAL_METRICS:
        values = values.dropna()
        if values.empty:
            return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    return bootstrap_ci(values, samples, confidence, seed).as_dict()


def _paired(a: pd.Series, b: pd.Series, metric: str, samples: int, confidence: float, seed: int) -> dict[str, float]:
    if metric in OPTIONAL_METRICS:
        both = a.notna() & b.notna()
        if not both.any():
            return dict(_NO_COMPARISON)
        a, b = a[both], b[both]
    return paired_comparison(a, b, samples, confidence, seed).as_dict()


def _breakdown(table: pd.DataFrame, models: list[str], by: str, samples: int, confidence: float,
               seed: int) -> list[dict[str, Any]]:
    rows = []
    for value, group in table.groupby(by, sort=True):
        row: dict[str, Any] = {by: str(value), "n": int(len(group))}
        for m in models:
            acc = bootstrap_ci(group[col(m, "domain_correct")], samples, confidence, seed)
            row[m] = {"domain_accuracy": acc.mean, "low": acc.low, "high": acc.high,
                      **{k: float(group[col(m, k)].mean()) for k in ("token_f1", "semantic_similarity", "answer_words")
                         if col(m, k) in group}}
        rows.append(row)
    return rows


def relative_improvement(summary: dict[str, Any], model: str, metric: str = "domain_correct") -> float | None:
    base = summary["means"][summary["reference"]][metric]["mean"]
    return None if base == 0 else (summary["means"][model][metric]["mean"] - base) / base


# -- rendering ----------------------------------------------------------------------------------------


def _ci(x: dict[str, float]) -> str:
    return f"{x['mean']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def tables(summary: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The report's tables as frames (also logged to MLflow and printed by `app eval compare`)."""
    models, ref, metrics = summary["models"], summary["reference"], metrics_of(summary)
    means = pd.DataFrame([{"metric": LABELS[k], **{m: _ci(summary["means"][m][k]) for m in models}} for k in metrics])
    if summary.get("corpus_bleu"):
        means.loc[len(means)] = {"metric": "BLEU (corpus)", **{m: f"{summary['corpus_bleu'][m]:.3f}" for m in models}}
    comp_rows = []
    for m, per in summary["comparisons"].items():
        for k in metrics:
            c = per[k]
            comp_rows.append({"model": m, "metric": LABELS[k], f"{ref}": f"{c['mean_a']:.3f}", "model mean": f"{c['mean_b']:.3f}",
                              "difference [CI]": f"{c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]",
                              "p (bootstrap)": _p(c["p_bootstrap"]), "p (permutation)": _p(c["p_permutation"]),
                              "p (Holm)": _p(c["p_holm"]), "better/worse": f"{c['wins_b']}/{c['wins_a']}",
                              "detectable (80% power)": f"{c['detectable']:.3f}" if "detectable" in c else "-"})
    out = {"means": means, "comparisons": pd.DataFrame(comp_rows)}
    origin_rows = []
    for origin, per_model in summary.get("comparisons_by_origin", {}).items():
        for m, per in per_model.items():
            for k, c in per.items():
                origin_rows.append({"origin": origin, "n": c["n"], "model": m, "metric": LABELS[k],
                                    f"{ref}": f"{c['mean_a']:.3f}", "model mean": f"{c['mean_b']:.3f}",
                                    "difference [CI]": f"{c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]",
                                    "p (permutation)": _p(c["p_permutation"]),
                                    "detectable (80% power)": f"{c['detectable']:.3f}"})
    out["comparisons_by_origin"] = pd.DataFrame(origin_rows)
    for by, rows in summary["breakdown"].items():
        out[f"by_{by}"] = pd.DataFrame([{by: r[by], "n": r["n"], **{
            m: f"{r[m]['domain_accuracy']:.3f} [{r[m]['low']:.3f}, {r[m]['high']:.3f}]" for m in models}} for r in rows])
    out["by_origin_all"] = pd.DataFrame([
        {"origin": r["origin"], "n": r["n"], "model": m, "domain accuracy": f"{r[m]['domain_accuracy']:.3f}",
         "token F1": f"{r[m]['token_f1']:.3f}",
         "semantic similarity": f"{r[m]['semantic_similarity']:.3f}" if "semantic_similarity" in r[m] else "-",
         "answer words": f"{r[m]['answer_words']:.0f}" if "answer_words" in r[m] else "-"}
        for r in summary["breakdown"].get("origin", []) for m in models])
    return out


def origin_lines(summary: dict[str, Any]) -> list[str]:
    """The headline per origin: each model's domain accuracy and semantic similarity on the
    questions of one origin (the figures to read beside an overall mean)."""
    lines = []
    for r in summary["breakdown"].get("origin", []):
        parts = [f"{m} {r[m]['domain_accuracy']:.3f}" + (f" (similarity {r[m]['semantic_similarity']:.3f})"
                                                          if "semantic_similarity" in r[m] else "")
                 for m in summary["models"]]
        line = f"Domain accuracy on {r['origin']} questions (n={r['n']}): " + ", ".join(parts) + "."
        for m, per in summary.get("comparisons_by_origin", {}).get(r["origin"], {}).items():
            c = per["semantic_similarity"]
            line += (f" {m} minus {summary['reference']} in similarity: {c['difference']:+.3f} "
                     f"[{c['low']:+.3f}, {c['high']:+.3f}], p={_p(c['p_permutation'])}, detectable {c['detectable']:.3f}.")
        lines.append(line)
    return lines


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def human_tables(human: dict[str, Any], models: list[str]) -> dict[str, pd.DataFrame]:
    """Tables of a human-evaluation study: scores per model, agreement, and human-vs-metric correlations."""
    sc = human["scores"]["scores"]
    scores = pd.DataFrame([{"criterion": c, **{m: _ci(sc[m][c]) if c in sc.get(m, {}) else "-" for m in models}}
                           for c in CRITERIA])
    prefs = pd.DataFrame([{"model": m, "against": p["against"], "votes": p["votes"], "wins": p["wins"],
                           "losses": p["losses"], "ties": p["ties"]} for m, p in human["scores"]["preferences"].items()])
    agree = []
    for c, a in human["agreement"].items():
        if not a.get("ratings"):
            continue
        kappas = [x["kappa"] for x in a["cohen_kappa"] if x["kappa"] is not None]
        agree.append({"criterion": c, "ratings": a["ratings"], "items": a["items"],
                      f"Krippendorff alpha ({a['level']})": _num(a["krippendorff_alpha"]),
                      "Fleiss kappa": f"{_num(a['fleiss']['kappa'])} ({a['fleiss']['items']} items)",
                      "Cohen kappa per pair": ", ".join(f"{x['a']}/{x['b']} {_num(x['kappa'])} (n={x['items']})"
                                                        for x in a["cohen_kappa"]) or "-",
                      "mean Cohen kappa": _num(float(np.mean(kappas)) if kappas else None)})
    corr = human["correlations"]
    corr_rows = [{"criterion": c, **{LABELS[k]: ("n/a" if v is None else f"{v['rho']:+.2f}")
                                     for k, v in corr[c].items()}} for c in CRITERIA if c in corr]
    return {"human_scores": scores, "human_preferences": prefs, "human_agreement": pd.DataFrame(agree),
            "human_vs_metrics": pd.DataFrame(corr_rows)}


def _markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    cells = [[str(v).replace("|", "\\|").replace("\n", " ") for v in row] for row in df.itertuples(index=False)]
    head = "| " + " | ".join(map(str, df.columns)) + " |\n| " + " | ".join("---" for _ in df.columns) + " |\n"
    return head + "".join("| " + " | ".join(r) + " |\n" for r in cells)


def plot_means(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, metrics = summary["models"], metrics_of(summary)
    x = np.arange(len(metrics))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, m in enumerate(models):
        vals = [summary["means"][m][k] for k in metrics]
        mean = np.array([v["mean"] for v in vals])
        err = np.array([[v["mean"] - v["low"] for v in vals], [v["high"] - v["mean"] for v in vals]])
        ax.bar(x + i * width - 0.4 + width / 2, mean, width, yerr=err, capsize=3, label=m)
    ax.set_xticks(x, [LABELS[k] for k in metrics], rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"Means with {summary['confidence']:.0%} bootstrap intervals ({summary['examples']} examples)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_topics(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, models = summary["breakdown"]["topic"], summary["models"]
    y = np.arange(len(rows))
    height = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(rows) * len(models) + 1)))
    for i, m in enumerate(models):
        ax.barh(y + i * height - 0.4 + height / 2, [r[m]["domain_accuracy"] for r in rows], height, label=m)
    ax.set_yticks(y, [f"{r['topic'][:40]} (n={r['n']})" for r in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("domain accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def disagreements(table: pd.DataFrame, models: list[str], limit: int = 10) -> pd.DataFrame:
    """Examples where the models' domain verdicts differ (the reference wrong first)."""
    verdicts = table[[col(m, "domain_correct") for m in models]]
    differ = table[verdicts.nunique(axis=1) > 1]
    cols = ["question", "reference", *[col(m, "answer") for m in models]]
    return differ[cols].head(limit).rename(columns={col(m, "answer"): m for m in models})


def write_report(out: Path, summary: dict[str, Any], table: pd.DataFrame, facts: dict[str, Any],
                 human: dict[str, Any] | None = None) -> dict[str, Path]:
    """report.md, report.html (plots inline) and the plot files under ``out``; with ``human``, the
    results of a human-evaluation study as well."""
    plots = {"means": out / "means.png", "topics": out / "topics.png"}
    plot_means(summary, plots["means"])
    plot_topics(summary, plots["topics"])
    t = tables(summary)
    models = summary["models"]
    examples = disagreements(table, models)
    intro = [
        f"Test set: {facts['test_set']} — {summary['examples']} examples"
        + (f" ({facts['retrieval']['retrieved']} with context retrieved by {facts['retrieval']['method']}, "
           f"top {facts['retrieval']['top_k']}"
           + (", within the question's topic folder" if facts["retrieval"].get("scope") == "topic" else "") + ")"
           if facts.get("retrieval", {}).get("retrieved") else ""),
        f"Decoding: greedy (temperature 0), at most {facts['max_new_tokens']} new tokens, the training prompt format.",
        f"Domain accuracy: {facts['domain_definition']}.",
        *([f"LLM-judge accuracy: {facts['judge']['definition']}"] if facts.get("judge") else []),
        f"Intervals: {summary['confidence']:.0%} percentile bootstrap over examples ({summary['bootstrap_samples']} "
        f"resamples); comparisons are paired (same examples) against **{summary['reference']}**, p-values two-sided, "
        "Holm-adjusted across the metrics of a pair.",
    ]
    for m in models[1:]:
        rel = relative_improvement(summary, m)
        if rel is not None:
            intro.append(f"Domain accuracy of {m} relative to {summary['reference']}: {rel:+.1%}.")
        sim = summary["comparisons"][m]["semantic_similarity"]
        base_sim = sim["mean_a"]
        intro.append(f"Semantic similarity of {m} against {summary['reference']}: {sim['mean_b']:.3f} vs {base_sim:.3f} "
                     + (f"({(sim['mean_b'] - base_sim) / base_sim:+.1%}), " if base_sim else "")
                     + f"paired difference {sim['difference']:+.3f} [{sim['low']:+.3f}, {sim['high']:+.3f}], "
                     f"p={_p(sim['p_permutation'])} (permutation), n={sim['n']}"
                     + (f"; the test detects a true difference of {sim['detectable']:.3f} or more 80% of the time"
                        if "detectable" in sim else "") + ".")
    intro += origin_lines(summary)
    if summary.get("answer_words"):
        intro.append("Mean answer length (words): " + ", ".join(f"{m} {w:.0f}" for m, w in summary["answer_words"].items())
                     + " — length moves whole-answer F1 and similarity: a shorter answer scores higher against a terse "
                     "reference and lower against a paragraph one.")
    errs = {m: n for m, n in summary["request_errors"].items() if n}
    if errs:
        intro.append(f"Failed requests (scored as wrong answers): {errs}.")
    excluded = {m: n for m, n in summary.get("judge_excluded", {}).items() if n}
    if excluded:
        intro.append(f"Answers the LLM judge gave no verdict on (it abstained, contradicted itself or said nothing "
                     f"readable, or the request failed), left out of the LLM-judge accuracy and its comparisons: {excluded}.")
    sections = [("Metrics", t["means"]), ("Paired comparisons", t["comparisons"]), ("By topic", t["by_topic"]),
                ("By origin (domain accuracy)", t["by_origin"]), ("By origin (all headline metrics)", t["by_origin_all"])]
    if not t["comparisons_by_origin"].empty:
        sections.append(("Paired comparisons within each origin", t["comparisons_by_origin"]))
    if human:
        h = human_tables(human, models)
        intro.append(f"Human evaluation (study {human['study']}): {human['ratings']} ratings by "
                     f"{len(human['annotators'])} annotators, blind, {human['per_item']} annotators per item; "
                     "rubric scores 1-5 averaged per answer before the model means.")
        sections += [("Human evaluation: rubric scores", h["human_scores"]),
                     ("Human evaluation: side-by-side preferences", h["human_preferences"]),
                     ("Human evaluation: inter-annotator agreement", h["human_agreement"]),
                     ("Human scores vs automatic metrics (Spearman rho per answer)", h["human_vs_metrics"])]
    sections.append(("Examples where the models disagree", examples))
    md = [f"# Evaluation {facts['run_name']}\n", *[f"- {line}" for line in intro], ""]
    for title, df in sections:
        md += [f"## {title}\n", _markdown_table(df)]
        if title == "Metrics":
            md.append(f"![means]({plots['means'].name})\n")
        if title == "By topic":
            md.append(f"![topics]({plots['topics'].name})\n")
    (out / "report.md").write_text("\n".join(md))

    def img(p: Path) -> str:
        return f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'

    html = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>Evaluation {escape(facts['run_name'])}</title>",
            "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
            "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
            "vertical-align:top}th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
            f"<h1>Evaluation {escape(facts['run_name'])}</h1><ul>",
            *[f"<li>{escape(line).replace('**', '')}</li>" for line in intro], "</ul>"]
    for title, df in sections:
        html.append(f"<h2>{escape(title)}</h2>")
        html.append(df.to_html(index=False, escape=True, border=0) if not df.empty else "<p>(none)</p>")
        if title == "Metrics":
            html.append(img(plots["means"]))
        if title == "By topic":
            html.append(img(plots["topics"]))
    html.append("</body></html>")
    (out / "report.html").write_text("\n".join(html))
    return {"markdown": out / "report.md", "html": out / "report.html", **plots}


