"""The experiment's analysis: quality scores, per-arm metrics, the statistics, the decision, the timeline.

Read from the experiment database only (the service may be running or gone). The unit of analysis is
the unit of assignment (a user or session): every metric is a ratio of per-unit sums, its variance the
delta method's, so a user asking many questions does not count as many independent samples.

- primary (``ab.decision.primary``): thumbs up among rated responses, mean 1-5 rating, or the share judged
  correct by the evaluation's rule on questions with a known answer;
- secondary, Holm-corrected together with the primary: the other two of those, the error rate, and
  end-to-end latency (Mann-Whitney over requests, bootstrap intervals of the median and p95);
- sample-ratio mismatch over the units of each arm against the latest split;
- the power analysis (planned units per arm) shown from the first look;
- the always-valid p-value is the minimum over looks at every ``look_every`` new units with a primary
  value, recomputed from the stored events, so a report read at any time is valid;
- shadow mode: agreement with the served answer (embedding cosine), length and latency of the shadow
  arm, and shed / timed-out / failed calls.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from app.ab.config import AbConfig
from app.ab.decide import decide
from app.ab.stats import (
    SequentialState,
    aa_false_positive_rates,
    compare_latency,
    compare_ratio,
    holm,
    srm_check,
    units_for_mean,
    units_for_rate,
)
from app.ab.store import ExperimentStore
from app.tracking import finite

PRIMARY_VALUE: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "thumbs_up": lambda r: None if r.get("thumbs_up") is None else float(bool(r["thumbs_up"])),
    "rating": lambda r: None if r.get("rating") is None else float(r["rating"]),
    "domain_correct": lambda r: None if r.get("domain_correct") is None else float(r["domain_correct"]),
}
MAX_LOOKS = 100


def score_pending(store: ExperimentStore, cfg: AbConfig, references: dict[str, str], rule) -> int:
    """Score every unscored request of the experiment (reference-free; reference-based where the
    question is one of ``references``); returns how many were scored."""
    from app.ab.quality import score_rows

    done = 0
    while True:
        rows = store.unscored(cfg.experiment)
        if not rows:
            return done
        for r in rows:
            if not r.get("reference"):
                r["reference"] = reference_for(r.get("question") or "", references)
        primaries = {}
        ids = {r["primary_id"] for r in rows if r.get("role") == "shadow" and r.get("primary_id")}
        if ids:
            primaries = {r["id"]: r.get("answer") or "" for r in store.requests(cfg.experiment, role="served")
                         if r["id"] in ids}
        store.set_scores(score_rows(rows, rule, primaries))
        done += len(rows)


def reference_for(question: str, references: dict[str, str]) -> str | None:
    """The known answer of a recorded question: the question itself, or the one its prompt ends with (the
    training and evaluation templates put the question last, after the context)."""
    if question in references:
        return references[question]
    tail = question.rstrip()
    best = max((q for q in references if q and tail.endswith(q)), key=len, default=None)
    return references[best] if best else None


def expected_units(served: list[dict[str, Any]], splits: list[dict[str, Any]],
                   default: dict[str, float]) -> dict[str, float]:
    """Units each arm should have, each unit counted under the split in force at its first request: a live
    change of the split (a ramp-up, a promotion) is not a sample-ratio mismatch."""
    first: dict[str, str] = {}
    for r in sorted(served, key=lambda r: r["created_at"]):
        first.setdefault(r["unit"], r["created_at"])
    times = [sp["at"] for sp in splits]
    out: dict[str, float] = defaultdict(float)
    for at in first.values():
        i = bisect_right(times, at) - 1
        w = splits[max(i, 0)]["weights"] if splits else default
        total = sum(w.values()) or 1.0
        for arm, x in w.items():
            out[arm] += x / total
    return dict(out)


def _per_unit(rows: list[dict[str, Any]], value: Callable[[dict[str, Any]], float | None]) -> list[tuple[float, float]]:
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        v = value(r)
        if v is not None:
            sums[r["unit"]][0] += v
            sums[r["unit"]][1] += 1
    return [(s, n) for s, n in sums.values()]


def _tau2(cfg: AbConfig) -> float:
    """The mSPRT's mixing variance: the square of the smallest change worth detecting (absolute)."""
    d = cfg.decision
    base = 3.0 if d.primary == "rating" else d.expected_rate  # a rating's middle on the 1-5 scale
    return (d.mde_relative * base) ** 2


def planned_units(cfg: AbConfig) -> int:
    d = cfg.decision
    if d.primary == "rating":
        return units_for_mean(1.0, d.mde_relative * 3.0, d.alpha, d.power)
    return units_for_rate(d.expected_rate, d.mde_relative, d.alpha, d.power)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def arm_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    e2e = [r["e2e_ms"] for r in ok if r.get("e2e_ms") is not None]
    ttft = [r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None]

    def mean(key: str) -> float | None:
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    rated = [r for r in rows if r.get("thumbs_up") is not None]
    return {"units": len({r["unit"] for r in rows}), "requests": len(rows), "errors": len(rows) - len(ok),
            "feedback": sum(1 for r in rows if r.get("thumbs_up") is not None or r.get("rating") is not None),
            "thumbs_up_rate": (sum(bool(r["thumbs_up"]) for r in rated) / len(rated)) if rated else None,
            "mean_rating": mean("rating"), "domain_correct": mean("domain_correct"), "token_f1": mean("token_f1"),
            "answer_words": mean("answer_words"), "empty_or_refusal": mean("empty_or_refusal"),
            "groundedness": mean("groundedness"),
            "e2e_ms_p50": _percentile(e2e, 50), "e2e_ms_p95": _percentile(e2e, 95),
            "ttft_ms_p50": _percentile(ttft, 50), "ttft_ms_p95": _percentile(ttft, 95)}


def timeline(cfg: AbConfig, baseline_rows: list[dict[str, Any]], candidate_rows: list[dict[str, Any]],
             tau2: float) -> tuple[list[dict[str, Any]], SequentialState]:
    """Looks at the primary metric, every ``step`` new primary values (at most MAX_LOOKS looks), oldest first;
    the sequential state carries the always-valid p-value across them."""
    value = PRIMARY_VALUE[cfg.decision.primary]
    events = sorted(((r["created_at"], arm, r) for arm, rows in (("b", baseline_rows), ("c", candidate_rows))
                     for r in rows if value(r) is not None), key=lambda t: t[0])
    state = SequentialState()
    looks: list[dict[str, Any]] = []
    step = max(1, math.ceil(len(events) / MAX_LOOKS))
    for end in list(range(step, len(events), step)) + ([len(events)] if events else []):
        seen = events[:end]
        b = _per_unit([r for _, a, r in seen if a == "b"], value)
        c = _per_unit([r for _, a, r in seen if a == "c"], value)
        if len(b) < 2 or len(c) < 2:
            continue
        # The sequential test starts once every arm has min_units_per_arm units (its burn-in, as the decision
        # rule's): its plug-in variance is unreliable on a handful of units, and A/A simulations with looks
        # after every unit or two put its error rate near 8% without the burn-in, 2.4% with it.
        burned_in = min(len(b), len(c)) >= cfg.decision.min_units_per_arm
        comp = compare_ratio(cfg.decision.primary, b, c, 1 - cfg.decision.alpha, tau2 if burned_in else None,
                             state)
        looks.append({"at": seen[-1][0], "observations": end, "n_baseline": comp.n_baseline,
                      "n_candidate": comp.n_candidate, "baseline": comp.baseline, "candidate": comp.candidate,
                      "difference": comp.difference, "ci": list(comp.ci), "p_fixed": comp.p_value,
                      "p_sequential": comp.sequential["p_value"] if comp.sequential else state.p_value,
                      "confidence_sequence": list(comp.sequential["confidence_sequence"]) if comp.sequential
                      else [None, None]})
    return looks, state


def analyse(store: ExperimentStore, cfg: AbConfig, references: dict[str, str] | None = None, rule=None) -> dict[str, Any]:
    """The whole report of ``cfg.experiment`` as a JSON-able dict (see the module docstring)."""
    if rule is not None:
        score_pending(store, cfg, references or {}, rule)
    rows = store.requests(cfg.experiment)
    served = [r for r in rows if r["role"] == "served"]
    shadow = [r for r in rows if r["role"] == "shadow"]
    by_arm: dict[str, list[dict[str, Any]]] = {a.name: [] for a in cfg.arms}
    for r in served:
        by_arm.setdefault(r["arm"], []).append(r)
    splits = store.splits(cfg.experiment)
    weights = splits[-1]["weights"] if splits else {a.name: a.weight for a in cfg.arms}
    units = {arm: len({r["unit"] for r in rs}) for arm, rs in by_arm.items()}
    expected = expected_units(served, splits, {a.name: a.weight for a in cfg.arms})
    live = {a: e for a, e in expected.items() if e > 0}
    srm = srm_check({a: units.get(a, 0) for a in live}, live) if len(live) > 1 and sum(units.values()) else \
        {"alarm": False, "p_value": None, "observed": units, "expected": None,
         "note": "one arm has had all the traffic (a promoted winner): no ratio to check"}
    tau2 = _tau2(cfg)
    planned = planned_units(cfg)
    alpha = cfg.decision.alpha
    value = PRIMARY_VALUE[cfg.decision.primary]
    base_rows = by_arm.get(cfg.baseline, [])
    comparisons: dict[str, Any] = {}
    decisions: dict[str, Any] = {}
    timelines: dict[str, Any] = {}
    for arm in (a.name for a in cfg.arms if a.name != cfg.baseline):
        cand_rows = by_arm.get(arm, [])
        looks, state = timeline(cfg, base_rows, cand_rows, tau2)
        primary = compare_ratio(cfg.decision.primary, _per_unit(base_rows, value), _per_unit(cand_rows, value),
                                1 - alpha)
        primary.sequential = {"p_value": state.p_value, "looks": state.looks, "tau2": tau2,
                              "confidence_sequence": looks[-1]["confidence_sequence"] if looks else [None, None]}
        secondary = [compare_ratio(name, _per_unit(base_rows, fn), _per_unit(cand_rows, fn), 1 - alpha)
                     for name, fn in PRIMARY_VALUE.items() if name != cfg.decision.primary]
        errors = compare_ratio("error_rate", _per_unit(base_rows, lambda r: float(r["status"] != "ok")),
                               _per_unit(cand_rows, lambda r: float(r["status"] != "ok")), 1 - alpha)
        lat_b = [r["e2e_ms"] for r in base_rows if r["status"] == "ok" and r.get("e2e_ms") is not None]
        lat_c = [r["e2e_ms"] for r in cand_rows if r["status"] == "ok" and r.get("e2e_ms") is not None]
        latency = compare_latency("e2e_ms", lat_b, lat_c, 1 - alpha) if len(lat_b) > 1 and len(lat_c) > 1 else None
        family = [primary, *[c for c in secondary if c.n_baseline > 1 and c.n_candidate > 1], errors]
        if latency is not None:
            family.append(latency)
        adjusted = holm(family)
        comparisons[arm] = [finite(c.to_dict()) for c in adjusted]
        decisions[arm] = decide(cfg.baseline, arm, adjusted[0], srm, cfg.decision, planned, errors=errors,
                                latency=latency).to_dict()
        timelines[arm] = looks
    return {"experiment": cfg.experiment, "public_model": cfg.public_model, "baseline": cfg.baseline,
            "aa_calibration": aa_calibration(cfg, timelines, tau2),
            "arms": {a.name: a.model for a in cfg.arms}, "weights": weights, "primary": cfg.decision.primary,
            "sequential": cfg.decision.sequential, "alpha": alpha, "generated": datetime.now(timezone.utc).isoformat(),
            "power": {"planned_units_per_arm": planned, "mde_relative": cfg.decision.mde_relative,
                      "power": cfg.decision.power, "expected_rate": cfg.decision.expected_rate},
            "per_arm": {arm: arm_summary(rs) for arm, rs in by_arm.items()}, "srm": finite(srm),
            "comparisons": comparisons, "decisions": decisions, "timeline": timelines,
            "shadow": shadow_summary(shadow), "splits": splits}


def aa_calibration(cfg: AbConfig, timelines: dict[str, list[dict[str, Any]]], tau2: float) -> dict[str, Any] | None:
    """Why the report reads the sequential p-value: simulated A/A experiments with this experiment's looks
    and units per look, at the baseline's observed rate (the primary metric as a two-proportion test),
    and how often each way of reading them would have declared a difference. None before two looks or
    for the 1-5 rating (not a rate)."""
    looks = next((t for t in timelines.values() if len(t) >= 2), None)
    if looks is None or cfg.decision.primary == "rating":
        return None
    last = looks[-1]
    per_look = max(1, round(min(last["n_baseline"], last["n_candidate"]) / len(looks)))
    rate = min(max(float(last["baseline"]), 0.05), 0.95)
    return aa_false_positive_rates(rate, len(looks), per_look, tau2, cfg.decision.alpha, reps=1000, seed=0,
                                   burn_in=cfg.decision.min_units_per_arm)


def shadow_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"calls": 0}
    status = defaultdict(int)
    for r in rows:
        status[r["status"]] += 1
    ok = [r for r in rows if r["status"] == "ok"]
    sims = [r["similarity_to_primary"] for r in ok if r.get("similarity_to_primary") is not None]
    out: dict[str, Any] = {"calls": len(rows), "status": dict(status), "arms": sorted({r["arm"] for r in rows})}
    if sims:
        out["similarity_to_served_mean"] = float(np.mean(sims))
        out["similarity_to_served_p10"] = float(np.percentile(sims, 10))
    out["shadow_e2e_ms_p50"] = _percentile([r["e2e_ms"] for r in ok if r.get("e2e_ms") is not None], 50)
    out["domain_correct"] = (float(np.mean([r["domain_correct"] for r in ok if r.get("domain_correct") is not None]))
                             if any(r.get("domain_correct") is not None for r in ok) else None)
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the decision first, then the per-arm table and the comparisons."""
    lines = [f"# A/B experiment `{report['experiment']}`", "",
             f"Public model `{report['public_model']}`; arms {report['arms']}; split {report['weights']}; primary "
             f"metric `{report['primary']}` ({'sequential, always valid' if report['sequential'] else 'fixed horizon'}, "
             f"alpha {report['alpha']}); planned units per arm {report['power']['planned_units_per_arm']} "
             f"(power {report['power']['power']:.0%} for a {report['power']['mde_relative']:.0%} relative change).", ""]
    srm = report["srm"]
    lines.append(f"Sample-ratio check: {'ALARM' if srm.get('alarm') else 'ok'} (p = {srm.get('p_value')}, "
                 f"units {srm.get('observed')}).")
    for arm, d in report["decisions"].items():
        lines += ["", f"## {report['baseline']} vs {arm}: {d['outcome']}" + (f", winner {d['winner']}" if d["winner"] else ""),
                  *[f"- {r}" for r in d["reasons"]]]
        lines += ["", "| metric | baseline | candidate | difference | 95% interval | relative | p | p (Holm) | test |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in report["comparisons"][arm]:
            lines.append(f"| {c['metric']} | {_f(c['baseline'])} | {_f(c['candidate'])} | {_f(c['difference'])} | "
                         f"[{_f(c['ci'][0])}, {_f(c['ci'][1])}] | {_f(c['relative'])} | {_f(c['p_value'])} | "
                         f"{_f(c['p_adjusted'])} | {c['test']} |")
    lines += ["", "| arm | units | requests | errors | feedback | thumbs up | rating | domain correct | p50 ms | p95 ms |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, s in report["per_arm"].items():
        lines.append(f"| {arm} | {s['units']} | {s['requests']} | {s['errors']} | {s['feedback']} | "
                     f"{_f(s['thumbs_up_rate'])} | {_f(s['mean_rating'])} | {_f(s['domain_correct'])} | "
                     f"{_f(s['e2e_ms_p50'])} | {_f(s['e2e_ms_p95'])} |")
    cal = report.get("aa_calibration")
    if cal:
        lines += ["", f"Why the decision reads the sequential p-value: in {cal['experiments']} simulated A/A experiments "
                  f"with this experiment's {cal['looks']} looks of about {cal['units_per_arm_per_look']} units per arm "
                  f"(rate {cal['rate']:.2f}), a fixed-horizon test read once declares a difference "
                  f"{cal['fixed_read_once']:.1%} of the time, the same test read at every look "
                  f"{cal['fixed_read_every_look']:.1%}, the sequential test read at every look "
                  f"{cal['sequential_read_every_look']:.1%} (alpha {cal['alpha']})."]
    if report["shadow"].get("calls"):
        lines += ["", f"Shadow calls: {report['shadow']}"]
    return "\n".join(lines) + "\n"


def _f(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


__all__ = ["analyse", "markdown", "score_pending", "planned_units", "arm_summary", "timeline", "PRIMARY_VALUE"]
