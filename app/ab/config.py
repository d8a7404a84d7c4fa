"""The A/B stage's config: the experiment's arms and split, shadow mode, the decision rule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from app.sections import Section, duplicates

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def check_weights(weights: dict[str, float]) -> None:
    """The rule for a split (the config's and every live change's): numbers >= 0 summing to 1 (ValueError)."""
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in weights.values()):
        raise ValueError(f"weights must be numbers >= 0, got {weights}")
    total = sum(weights.values())
    if abs(total - 1) > 1e-6:
        raise ValueError(f"the weights must sum to 1, they sum to {total:g} "
                         f"({', '.join(f'{a}={w:g}' for a, w in weights.items())})")


class ArmConfig(Section):
    name: str = Field(..., pattern=NAME, description="Arm name, reported in the X-Experiment-Arm header.")
    model: str = Field(..., pattern=NAME, description="Model-store entry this arm serves.")
    weight: float = Field(..., ge=0, le=1, description="Share of the experiment's units; the arms' weights sum to 1.")


class ShadowConfig(Section):
    enabled: bool = Field(False, description="Also send a share of requests to the candidate; only the baseline "
                          "answers. The shadow call is never awaited on the request's path.")
    candidate: str | None = Field(None, description="Arm shadowing the baseline. None: the first arm that is not the "
                                  "baseline. Naming the baseline itself measures the noise baseline (A against A).")
    fraction: float = Field(1.0, ge=0, le=1, description="Share of the baseline's requests also sent to the shadow.")
    max_in_flight: PositiveInt = Field(4, description="Shadow calls running at once; more are shed (counted).")
    timeout_s: PositiveFloat = Field(60.0, description="A shadow call still running after this is cancelled (counted).")


class DecisionConfig(Section):
    primary: Literal["thumbs_up", "rating", "domain_correct"] = Field(
        "thumbs_up", description="The metric that decides: the share of thumbs up among rated responses, the mean "
        "1-5 rating, or the share judged correct by the evaluation's rule (questions with a known answer).")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level of the primary metric (two-sided).")
    sequential: bool = Field(True, description="Always-valid p-values (mSPRT): the result may be read at any time. "
                             "False: a fixed-horizon test, valid only once every arm has the planned units.")
    mde_relative: float = Field(0.3, gt=0, le=10, description="Smallest relative change of the primary metric worth "
                                "detecting: sets the planned units per arm (power analysis) and the sequential "
                                "test's mixing scale.")
    power: float = Field(0.8, gt=0.5, lt=1, description="Power of the planned sample size.")
    expected_rate: float = Field(0.5, gt=0, lt=1, description="The baseline's expected primary rate before data: "
                                 "for the power analysis shown at the start.")
    min_units_per_arm: PositiveInt = Field(30, description="No decision before every arm has this many units with "
                                           "a primary value, whatever the test says.")
    max_error_rate_increase: float = Field(0.02, ge=0, le=1, description="Guardrail: the candidate loses when its "
                                           "error rate is significantly higher and by more than this (absolute).")
    max_p95_latency_ratio: float = Field(1.5, ge=1, description="Guardrail: the candidate loses when its p95 "
                                         "end-to-end latency is significantly above this multiple of the baseline's.")
    promote: bool = Field(False, description="Send all traffic to the winner once decided (live reconfiguration).")


class SimulationConfig(Section):
    """The simulated user population (``app ab simulate``, jobs/ab_test.py): see app.ab.simulate."""

    users: PositiveInt = Field(400, description="Simulated users at most (each its own unit).")
    questions_per_user: PositiveInt = Field(2, description="Test-split questions each user asks.")
    noise: float = Field(0.1, ge=0, lt=0.5, description="Chance a user's thumbs up/down is the opposite of what the "
                         "evaluation's rule says about the answer it got.")
    concurrency: PositiveInt = Field(4, description="Users asking at once.")
    budget_s: PositiveFloat = Field(600.0, description="Stop after this long even without a decision.")
    look_every_s: PositiveFloat = Field(15.0, description="Read the report (and stop at a decision) this often.")
    stop_service: bool = Field(True, description="jobs/ab_test.py: remove the experiment's application at the end.")


class AbConfig(Section):
    """Shadow and A/B experiments behind one public model name (app.ab)."""

    experiment: str = Field("ft-vs-base", pattern=NAME, description="Experiment name: the assignment seed, the "
                            "database key and the MLflow run name. A new name reshuffles every unit.")
    public_model: str = Field("assistant", pattern=NAME, description="The model name clients ask for; the "
                              "experiment decides which arm answers.")
    baseline: str = Field("base", pattern=NAME, description="The control arm's name.")
    arms: list[ArmConfig] = Field(
        default_factory=lambda: [ArmConfig(name="base", model="smollm2-135m-instruct", weight=0.5),
                                 ArmConfig(name="finetuned", model="smollm2-135m-instruct-lora", weight=0.5)],
        description="The arms, in the order their ranges of the unit hash are laid out.")
    coverage: float = Field(1.0, gt=0, le=1, description="Share of units in the experiment; the rest get the baseline "
                            "and are not counted.")
    unit_header: str = Field("x-user-id", pattern=r"^[A-Za-z0-9-]+$", description="Header carrying the unit id; "
                             "without it the request's `user` field; without both the request is its own unit.")
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    db: str | None = Field(None, description="SQLAlchemy URL of the experiment database; None: SQLite at <home>/ab.db.")

    @model_validator(mode="after")
    def _arms(self) -> AbConfig:
        names = [a.name for a in self.arms]
        if len(self.arms) < 2:
            raise ValueError(f"ab.arms needs at least two arms (a baseline and a candidate), got {names}")
        if dup := duplicates(names):
            raise ValueError(f"ab.arms: arm names must be unique, repeated: {dup}")
        if self.baseline not in names:
            raise ValueError(f"ab.baseline {self.baseline!r} is not one of ab.arms {names}")
        try:
            check_weights({a.name: a.weight for a in self.arms})
        except ValueError as exc:
            raise ValueError(f"ab.arms: {exc}") from None
        if self.shadow.candidate is not None and self.shadow.candidate not in names:
            raise ValueError(f"ab.shadow.candidate {self.shadow.candidate!r} is not one of ab.arms {names}")
        return self

    def shadow_arm(self) -> str:
        return self.shadow.candidate or next(a.name for a in self.arms if a.name != self.baseline)

    def arm(self, name: str) -> ArmConfig:
        return next(a for a in self.arms if a.name == name)


__all__ = ["SimulationConfig", "AbConfig", "ArmConfig", "ShadowConfig", "DecisionConfig", "check_weights"]
