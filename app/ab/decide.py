"""The automatic decision: winner, no difference, keep running or invalid, with its reasons.

The rule, in order (each reason is written out in the decision):
1. A sample-ratio mismatch (chi-squared p < 0.001) makes the experiment invalid: the assignment or the
   event logging is broken, and no comparison of the arms can be trusted.
2. No decision before every arm has ``min_units_per_arm`` primary values.
3. Significance of the primary metric: with ``sequential`` the always-valid p-value (it may be read at
   any look); otherwise the fixed-horizon p-value, and only once both arms reach the planned units of
   the power analysis (reading it earlier is peeking).
4. A significant primary difference names the better arm. A better candidate still loses when it
   breaks a guardrail: an error rate significantly higher by more than ``max_error_rate_increase``, or
   a p95 latency significantly above ``max_p95_latency_ratio`` times the baseline's.
5. Not significant at the planned units: no difference, with the interval of the effect that could
   still exist. Before that: keep running.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from app.ab.config import DecisionConfig
from app.ab.stats import Comparison


@dataclass
class Decision:
    outcome: str  # "winner", "no difference", "keep running", "invalid"
    winner: str | None
    reasons: list[str] = field(default_factory=list)
    p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(c: Comparison) -> str:
    return f"{c.metric}: {c.baseline:.3g} -> {c.candidate:.3g} (difference {c.difference:+.3g}, " \
           f"95% interval [{c.ci[0]:+.3g}, {c.ci[1]:+.3g}], n {c.n_baseline}/{c.n_candidate})"


def decide(baseline: str, candidate: str, primary: Comparison, srm: dict[str, Any], cfg: DecisionConfig,
           planned_units: int | None, errors: Comparison | None = None,
           latency: Comparison | None = None) -> Decision:
    """Apply the module's rule to one candidate against the baseline."""
    if srm.get("alarm"):
        return Decision("invalid", None, [f"sample-ratio mismatch: units {srm['observed']} against expected "
                                          f"{srm['expected']} (chi-squared p = {srm['p_value']:.2g} < 0.001): "
                                          "check the assignment and the event logging before reading any result"])
    n_min = min(primary.n_baseline, primary.n_candidate)
    if n_min < cfg.min_units_per_arm:
        return Decision("keep running", None, [f"{n_min} of the {cfg.min_units_per_arm} units per arm needed "
                                               f"before any decision (ab.decision.min_units_per_arm); {_fmt(primary)}"])
    if cfg.sequential:
        if not primary.sequential:
            raise ValueError("decide: ab.decision.sequential is set but the primary comparison has no sequential result")
        p, how = primary.sequential["p_value"], "always-valid p-value (mSPRT)"
    else:
        if planned_units is not None and n_min < planned_units:
            return Decision("keep running", None, [
                f"fixed-horizon test: {n_min} of the {planned_units} planned units per arm (power "
                f"{cfg.power:.0%} for a {cfg.mde_relative:.0%} relative change); reading it now would be peeking; "
                + _fmt(primary)])
        p, how = primary.p_value, primary.test
    reasons = [f"primary {_fmt(primary)}; {how} p = {p:.3g} (alpha {cfg.alpha})"]
    if p >= cfg.alpha:
        if planned_units is not None and n_min >= planned_units:
            reasons.append(f"planned units reached ({planned_units} per arm) without a significant difference: a "
                           f"true difference is likely within [{primary.ci[0]:+.3g}, {primary.ci[1]:+.3g}]")
            return Decision("no difference", None, reasons, p)
        return Decision("keep running", None, reasons + ["not significant yet"], p)
    if primary.difference < 0:
        return Decision("winner", baseline, reasons + [f"the baseline {baseline} is better on {primary.metric}"], p)
    broken = []
    if errors is not None and errors.difference > cfg.max_error_rate_increase and errors.p_value < cfg.alpha:
        broken.append(f"error rate {errors.baseline:.3g} -> {errors.candidate:.3g} (p = {errors.p_value:.2g}), more "
                      f"than ab.decision.max_error_rate_increase = {cfg.max_error_rate_increase}")
    if latency is not None and latency.p_value < cfg.alpha:
        ratio = latency.extra["p95_candidate"] / max(latency.extra["p95_baseline"], 1e-9)
        if ratio > cfg.max_p95_latency_ratio:
            broken.append(f"p95 latency {latency.extra['p95_baseline']:.0f} -> {latency.extra['p95_candidate']:.0f} ms "
                          f"(x{ratio:.2f} > ab.decision.max_p95_latency_ratio = {cfg.max_p95_latency_ratio}, "
                          f"p = {latency.p_value:.2g})")
    if broken:
        return Decision("winner", baseline, reasons + [f"{candidate} is better on {primary.metric} but breaks a "
                                                       "guardrail: " + "; ".join(broken)], p)
    return Decision("winner", candidate, reasons + [f"{candidate} is better on {primary.metric} and within the "
                                                    "error and latency guardrails"], p)


__all__ = ["Decision", "decide"]
