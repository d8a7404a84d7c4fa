"""Agreement between annotators, human scores per model, and how well automatic metrics track them.

* Krippendorff's alpha (``krippendorff``): all annotators and items at once, missing ratings
  allowed; ordinal for the 1-5 rubric scores, nominal for preferences.
* Cohen's kappa (statsmodels) for every pair of annotators on the items both rated; unweighted.
* Fleiss' kappa (statsmodels) over the items rated by exactly the study's ``per_item`` annotators.
* Spearman rank correlation (scipy) between the mean human score of an answer and each automatic
  metric of the same answer.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from app.eval.human import CRITERIA, PREFERENCES, SCALE
from app.eval.report import OPTIONAL_METRICS, col, table_metrics
from app.eval.stats import bootstrap_ci

# Deferred imports: krippendorff, scipy, statsmodels are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


def _codes(ratings: pd.DataFrame, criterion: str) -> tuple[pd.DataFrame, list[Any]]:
    """Annotator x item table of one criterion as category codes 0..k-1 (NaN where not rated), and the categories."""
    if criterion == "preference":
        sub = ratings[ratings["kind"] == "pair"].dropna(subset=["preference"])
        cats: list[Any] = list(PREFERENCES)
        values = sub["preference"].map({c: i for i, c in enumerate(cats)})
    else:
        sub = ratings[ratings["kind"] == "single"].dropna(subset=[criterion])
        cats = list(range(SCALE[0], SCALE[1] + 1))
        values = sub[criterion].astype(float) - SCALE[0]
    table = pd.DataFrame({"annotator": sub["annotator"], "item_id": sub["item_id"], "v": values})
    return table.pivot(index="annotator", columns="item_id", values="v"), cats


def krippendorff_alpha(matrix: pd.DataFrame, level: str) -> float | None:
    import krippendorff

    pairable = matrix.loc[:, matrix.notna().sum(axis=0) >= 2]
    if pairable.shape[1] == 0 or np.unique(pairable.to_numpy()[~np.isnan(pairable.to_numpy())]).size < 2:
        return None  # no item rated twice, or one value everywhere: alpha is undefined
    return float(krippendorff.alpha(reliability_data=pairable.to_numpy(dtype=float), level_of_measurement=level))


def cohen_pairs(matrix: pd.DataFrame, n_categories: int) -> list[dict[str, Any]]:
    from statsmodels.stats.inter_rater import cohens_kappa

    out = []
    for a, b in combinations(matrix.index, 2):
        both = matrix.loc[[a, b]].dropna(axis=1)
        if both.shape[1] < 2:
            continue
        x, y = both.loc[a].to_numpy(dtype=int), both.loc[b].to_numpy(dtype=int)
        table = np.zeros((n_categories, n_categories))
        for i, j in zip(x, y):
            table[i, j] += 1
        p_exp = (table.sum(0) * table.sum(1)).sum() / table.sum() ** 2
        kappa = None if p_exp >= 1 else float(cohens_kappa(table, return_results=False))
        out.append({"a": a, "b": b, "items": int(both.shape[1]), "agreement": float(np.mean(x == y)), "kappa": kappa})
    return out


def fleiss(matrix: pd.DataFrame, per_item: int, categories: list[Any]) -> dict[str, Any]:
    from statsmodels.stats.inter_rater import fleiss_kappa

    full = matrix.loc[:, matrix.notna().sum(axis=0) == per_item]
    if full.shape[1] < 2:
        return {"items": int(full.shape[1]), "kappa": None}
    counts = np.stack([(full.to_numpy().T == c).sum(axis=1) for c in range(len(categories))], axis=1)
    p_cat = counts.sum(0) / counts.sum()
    if np.isclose((p_cat ** 2).sum(), 1.0):
        return {"items": int(full.shape[1]), "kappa": None}  # one category everywhere: undefined
    return {"items": int(full.shape[1]), "kappa": float(fleiss_kappa(counts, method="fleiss"))}


def agreement(ratings: pd.DataFrame, per_item: int) -> dict[str, Any]:
    """Every agreement figure, per rubric criterion and for preferences."""
    out = {}
    for criterion in (*CRITERIA, "preference"):
        matrix, cats = _codes(ratings, criterion)
        if matrix.empty:
            out[criterion] = {"ratings": 0}
            continue
        level = "nominal" if criterion == "preference" else "ordinal"
        out[criterion] = {"ratings": int(matrix.notna().sum().sum()), "items": int(matrix.shape[1]),
                          "krippendorff_alpha": krippendorff_alpha(matrix, level), "level": level,
                          "cohen_kappa": cohen_pairs(matrix, len(cats)), "fleiss": fleiss(matrix, per_item, cats)}
    return out


def model_scores(ratings: pd.DataFrame, models: list[str], samples: int, confidence: float, seed: int) -> dict[str, Any]:
    """Mean rubric scores per model (items averaged over annotators first) and pairwise preference rates."""
    single = ratings[ratings["kind"] == "single"]
    per_answer = single.groupby(["item_id", "model_a"])[list(CRITERIA)].mean().reset_index()
    scores = {}
    for m in models:
        rows = per_answer[per_answer["model_a"] == m]
        scores[m] = {c: bootstrap_ci(rows[c], samples, confidence, seed).as_dict() for c in CRITERIA if len(rows)}
    prefs = {}
    pair = ratings[ratings["kind"] == "pair"].dropna(subset=["preference"])
    for other in models[1:]:
        sub = pair[(pair["model_a"] == other) | (pair["model_b"] == other)]
        if sub.empty:
            continue
        winner = np.where(sub["preference"] == "tie", "tie", np.where(sub["preference"] == "A", sub["model_a"], sub["model_b"]))
        prefs[other] = {"against": models[0], "votes": int(len(sub)), "wins": int((winner == other).sum()),
                        "losses": int((winner == models[0]).sum()), "ties": int((winner == "tie").sum())}
    return {"scores": scores, "preferences": prefs}


def metric_correlations(ratings: pd.DataFrame, examples: pd.DataFrame) -> dict[str, Any]:
    """Spearman correlation of the mean human score of each answer with each automatic metric of it."""
    from scipy.stats import spearmanr

    single = ratings[ratings["kind"] == "single"]
    per_answer = single.groupby(["example_id", "model_a"])[list(CRITERIA)].mean().reset_index()
    metrics, auto = table_metrics(examples), []
    for r in per_answer.itertuples(index=False):
        row = examples[examples["example_id"] == r.example_id]
        auto.append({k: float(row[col(r.model_a, k)].iloc[0]) if len(row) else np.nan for k in metrics})
    joined = pd.concat([per_answer.reset_index(drop=True), pd.DataFrame(auto, columns=metrics)], axis=1)
    # Answers whose example is missing go; an optional metric's NaN (the judge gave no verdict) leaves
    # out only that metric's correlations.
    joined = joined.dropna(subset=[*CRITERIA, *(k for k in metrics if k not in OPTIONAL_METRICS)])
    out: dict[str, Any] = {"answers": int(len(joined))}
    for c in CRITERIA:
        out[c] = {}
        for k in metrics:
            both = joined[[c, k]].dropna()
            if len(both) < 3 or both[c].nunique() < 2 or both[k].nunique() < 2:
                out[c][k] = None
                continue
            rho, p = spearmanr(both[c], both[k])
            out[c][k] = {"rho": float(rho), "p": float(p)}
    return out
