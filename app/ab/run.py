"""The A/B stage's commands: start, status, split, report, simulate, stop (``app ab ...``, jobs/ab_test.py).

- start: check the config (arms in the model store, the public name free), deploy the arms' models
  behind the traffic-splitting ingress (app.ab.deployment) on the Serve cluster, record the split, and
  show the power analysis (units per arm the test needs) before any traffic;
- split: change the live split (the ingress replicas apply it within seconds; nothing restarts);
- report: score new responses, analyse (app.ab.report), write report.json / report.md / dashboard.html
  under ``<home>/ab/<experiment>/`` and log them to the experiment's MLflow run (one per experiment,
  reopened at each report, metrics stepped by report); with ``ab.decision.promote`` a winner gets all
  traffic through the same live split;
- simulate: the simulated user population (app.ab.simulate) against the running experiment.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from app.ab.config import AbConfig, check_weights
from app.ab.store import ExperimentStore, database_url
from app.config import ExperimentConfig
from app.errors import AppError

EXPERIMENT_TAG = "ab.experiment"


class AbRunError(AppError, RuntimeError):
    """An A/B command could not run; the message says why."""


def store_of(cfg: ExperimentConfig) -> ExperimentStore:
    return ExperimentStore(database_url(cfg.ab.db, cfg.paths.resolved_home()))


def out_dir(cfg: ExperimentConfig, experiment: str | None = None) -> Path:
    return cfg.paths.resolved_home() / "ab" / (experiment or cfg.ab.experiment)


def experiment_models(cfg: ExperimentConfig) -> list[str]:
    """The models the experiment's application serves: the arms', then any other of serving.models."""
    out: list[str] = []
    for m in [a.model for a in cfg.ab.arms] + list(cfg.serving.models):
        if m not in out:
            out.append(m)
    return out


def preflight(cfg: ExperimentConfig) -> None:
    """Every arm's model in the store, the public name not a model's: AbRunError naming what is wrong."""
    from app.model_store import ModelStoreError, model_store

    store = model_store(cfg)
    missing = []
    for a in cfg.ab.arms:
        try:
            store.get(a.model)
        except ModelStoreError:
            missing.append(f"{a.name} -> {a.model}")
    if missing:
        known = ", ".join(m.name for m in store.list()) or "none"
        raise AbRunError(f"ab.arms name models that are not in the model store: {', '.join(missing)} (in the store: "
                         f"{known}); add them with `app model prepare` / `app train run`, or fix ab.arms")
    if cfg.ab.public_model in experiment_models(cfg):
        raise AbRunError(f"ab.public_model {cfg.ab.public_model!r} is also the name of a served model; pick another")


def start(cfg: ExperimentConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Deploy the experiment (see the module docstring); returns the deployment's facts and the power analysis."""
    import ray

    from app import cluster
    from app.ab.deployment import build_app
    from app.ab.report import planned_units
    from app.serving.manager import cluster_address, deploy

    preflight(cfg)
    serving = cfg.serving.model_copy(update={"models": experiment_models(cfg)})
    home = cfg.paths.resolved_home()
    planned = planned_units(cfg.ab)
    progress(f"power analysis: {planned} units per arm for {cfg.ab.decision.power:.0%} power to detect a "
             f"{cfg.ab.decision.mde_relative:.0%} relative change of {cfg.ab.decision.primary} "
             f"(baseline rate {cfg.ab.decision.expected_rate}, alpha {cfg.ab.decision.alpha})")
    address = cluster_address(cfg, progress)
    if not ray.is_initialized():
        cluster.join_quietly(address)
    args = {"home": str(home), "serving": serving.model_dump(mode="json"), "ab": cfg.ab.model_dump(mode="json")}
    application = build_app(args)  # bad args fail here, before anything is deployed
    store = store_of(cfg)
    try:
        weights = {a.name: a.weight for a in cfg.ab.arms}
        latest = store.latest_split(cfg.ab.experiment)
        if latest is None or latest["weights"] != weights:
            store.record_split(cfg.ab.experiment, weights, "start" if latest is None else "start with the config's split")
        info = deploy(home, serving, progress, application=application)
    finally:
        store.close()
    return {**info, "experiment": cfg.ab.experiment, "public_model": cfg.ab.public_model,
            "arms": {a.name: a.model for a in cfg.ab.arms}, "weights": weights, "planned_units_per_arm": planned}


def status(cfg: ExperimentConfig) -> dict[str, Any]:
    """The running ingress's view (split, counters, event writer) and the database's request counts."""
    from app.endpoint import base_url, headers

    out: dict[str, Any] = {"experiment": cfg.ab.experiment}
    try:
        resp = httpx.get(base_url(cfg.serving) + "/v1/experiment", headers=headers(cfg.serving), timeout=10)
        out["service"] = resp.json() if resp.status_code == 200 else f"HTTP {resp.status_code}: {resp.text[:200]}"
    except httpx.HTTPError as exc:
        out["service"] = f"not reachable at {base_url(cfg.serving)} ({type(exc).__name__})"
    store = store_of(cfg)
    try:
        out["served_requests_per_arm"] = store.counts(cfg.ab.experiment)
        out["latest_split"] = store.latest_split(cfg.ab.experiment)
    finally:
        store.close()
    return out


def set_split(cfg: ExperimentConfig, weights: dict[str, float] | None, reason: str = "set by hand",
              shadow_fraction: float | None = None) -> dict[str, Any]:
    """Record a new live split (``weights`` None: the current ones) and optionally shadow fraction."""
    arms = {a.name for a in cfg.ab.arms}
    if shadow_fraction is not None:
        if not 0 <= shadow_fraction <= 1:
            raise AbRunError(f"the shadow fraction must be in [0, 1], got {shadow_fraction}")
        if shadow_fraction > 0 and not cfg.ab.shadow.enabled:
            raise AbRunError("a shadow fraction > 0 needs ab.shadow.enabled at start (the shadow arm is chosen then)")
    store = store_of(cfg)
    try:
        if weights is None:
            latest = store.latest_split(cfg.ab.experiment)
            weights = latest["weights"] if latest else {a.name: a.weight for a in cfg.ab.arms}
        if set(weights) != arms:
            raise AbRunError(f"the split must give a weight to each arm of {sorted(arms)}, got {sorted(weights)}")
        try:
            check_weights(weights)
        except ValueError as exc:
            raise AbRunError(str(exc)) from None
        store.record_split(cfg.ab.experiment, weights, reason, shadow_fraction)
    finally:
        store.close()
    return {"experiment": cfg.ab.experiment, "weights": weights, "shadow_fraction": shadow_fraction, "reason": reason,
            "applied": "by every ingress replica within a few seconds"}


def references(cfg: ExperimentConfig) -> dict[str, str]:
    """{question: reference answer} of the configured dataset's test split (empty when none is built)."""
    from app.datasets import latest_dataset
    from app.eval.testset import dataset_split

    try:
        frame = dataset_split(latest_dataset(cfg))
    except Exception:  # noqa: BLE001 - no dataset: live traffic has no known answers, which is fine
        return {}
    return dict(zip(frame["question"], frame["reference"]))


def experiment_config(cfg: ExperimentConfig, store: ExperimentStore, name: str) -> AbConfig | None:
    """The configured experiment, or another one of the database with its recorded arms and split."""
    if name == cfg.ab.experiment:
        return cfg.ab
    arms = store.arms(name)
    if len(arms) < 2:
        return None
    latest = store.latest_split(name)
    weights = latest["weights"] if latest else {a: 1 / len(arms) for a in arms}
    baseline = cfg.ab.baseline if cfg.ab.baseline in arms else sorted(arms)[0]
    return AbConfig.model_validate({**cfg.ab.model_dump(), "experiment": name, "baseline": baseline, "shadow": {},
                                    "arms": [{"name": a, "model": m, "weight": weights.get(a, 0)} for a, m in arms.items()]})


def analyse_now(cfg: ExperimentConfig, store: ExperimentStore, refs: dict[str, str] | None = None,
                score: bool = True) -> dict[str, Any]:
    from app.ab.report import analyse
    from app.eval.metrics import DomainRule

    return analyse(store, cfg.ab, refs if refs is not None else references(cfg),
                   DomainRule.of(cfg.evaluation) if score else None)


def report(cfg: ExperimentConfig, config_path: Path | None = None, track: bool = True,
           progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Analyse, write the report files, log them to MLflow, promote a winner when configured."""
    from app.ab.dashboard import render
    from app.ab.report import markdown

    store = store_of(cfg)
    try:
        if not store.requests(cfg.ab.experiment):
            raise AbRunError(f"experiment {cfg.ab.experiment!r} has no recorded request in {database_url(cfg.ab.db, cfg.paths.resolved_home())}"
                             " (start it with `app ab start` and send traffic to the public model first)")
        result = analyse_now(cfg, store)
        out = out_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "report.md").write_text(markdown(result))
        (out / "dashboard.html").write_text(render(result))
        result["files"] = {k: str(out / k) for k in ("report.json", "report.md", "dashboard.html")}
        winners = {a: d["winner"] for a, d in result["decisions"].items() if d["outcome"] == "winner"}
        if cfg.ab.decision.promote and len(winners) == 1:
            winner = next(iter(winners.values()))
            weights = {a.name: float(a.name == winner) for a in cfg.ab.arms}
            if result["weights"] != weights:
                store.record_split(cfg.ab.experiment, weights, f"promoted the winner {winner}: "
                                   + "; ".join(result["decisions"][next(iter(winners))]["reasons"])[:1500])
                result["promoted"] = winner
                progress(f"all traffic now goes to the winner {winner}")
        if track:
            result["mlflow_run_id"] = log_to_mlflow(cfg, result, out, config_path)
        return result
    finally:
        store.close()


def log_to_mlflow(cfg: ExperimentConfig, result: dict[str, Any], out: Path, config_path: Path | None) -> str:
    """One MLflow run per experiment: found by its tag and reopened, its metrics stepped by report."""
    import mlflow

    from app.tracking import connect, start_run

    connect(cfg)
    experiment = mlflow.set_experiment(cfg.tracking.experiment or cfg.name)
    found = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`{EXPERIMENT_TAG}` = '{cfg.ab.experiment}'",
                               max_results=1, output_format="list")
    resume = found[0].info.run_id if found else None
    step = int(time.time())
    with start_run(cfg, "ab_test", config_path, run_name=f"ab-{cfg.ab.experiment}", resume_run_id=resume,
                   tags={EXPERIMENT_TAG: cfg.ab.experiment}) as run:
        metrics: dict[str, float] = {}
        for arm, s in result["per_arm"].items():
            for key in ("units", "requests", "errors", "feedback", "thumbs_up_rate", "mean_rating", "domain_correct",
                        "e2e_ms_p50", "e2e_ms_p95", "ttft_ms_p50"):
                if isinstance(s.get(key), (int, float)):
                    metrics[f"{arm}.{key}"] = float(s[key])
        for arm, comps in result["comparisons"].items():
            primary = comps[0]
            for key in ("difference", "p_value", "p_adjusted"):
                if isinstance(primary.get(key), (int, float)):
                    metrics[f"{arm}.primary.{key}"] = float(primary[key])
            seq = (primary.get("sequential") or {}).get("p_value")
            if isinstance(seq, (int, float)):
                metrics[f"{arm}.primary.p_sequential"] = float(seq)
        if isinstance(result["srm"].get("p_value"), (int, float)):
            metrics["srm.p_value"] = float(result["srm"]["p_value"])
        mlflow.log_metrics(metrics, step=step)
        mlflow.set_tags({f"decision.{arm}": f"{d['outcome']}" + (f": {d['winner']}" if d["winner"] else "")
                         for arm, d in result["decisions"].items()})
        for name in ("report.json", "report.md", "dashboard.html"):
            mlflow.log_artifact(str(out / name), "ab")
        return run.info.run_id


def simulate(cfg: ExperimentConfig, users: int, questions_per_user: int, noise: float, concurrency: int,
             budget_s: float, look_every_s: float, config_path: Path | None = None,
             progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the simulated population against the running experiment, then the report (see app.ab.simulate)."""
    import asyncio

    from app.ab.simulate import run_population, test_questions
    from app.endpoint import base_url, headers

    if not 0 <= noise < 0.5:
        raise AbRunError(f"noise must be in [0, 0.5) (the chance a simulated user misjudges an answer), got {noise}")
    if users < 1 or questions_per_user < 1 or concurrency < 1 or budget_s <= 0 or look_every_s <= 0:
        raise AbRunError("users, questions per user, concurrency, budget and look interval must be positive")
    questions = test_questions(cfg, progress)
    refs = {q["question"]: q["reference"] for q in questions}
    store = store_of(cfg)
    try:
        def look() -> dict[str, Any]:
            return analyse_now(cfg, store, refs, score=False)

        progress(f"simulating up to {users} users x {questions_per_user} questions ({len(questions)} test questions, "
                 f"noise {noise:.0%}, {concurrency} in flight, budget {budget_s:.0f} s)")
        result = asyncio.run(run_population(cfg, base_url(cfg.serving), headers(cfg.serving), questions, users,
                                            questions_per_user, noise, concurrency, budget_s, look, look_every_s,
                                            cfg.seed, progress))
    finally:
        store.close()
    final = report(cfg, config_path, progress=progress)
    result["report"] = {k: final[k] for k in ("decisions", "per_arm", "srm", "files", "power")}
    result["mlflow_run_id"] = final.get("mlflow_run_id")
    return result


def ab_test(cfg: ExperimentConfig, config_path: Path | None = None,
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The A/B stage as one job: start the experiment, drive it with the simulated population
    (ab.simulation) until a decision or the budget, report, and remove the application when
    ab.simulation.stop_service."""
    sim = cfg.ab.simulation
    started = start(cfg, progress)
    try:
        result = simulate(cfg, sim.users, sim.questions_per_user, sim.noise, sim.concurrency, sim.budget_s,
                          sim.look_every_s, config_path, progress)
    finally:
        if sim.stop_service:
            progress("removing the experiment's application")
            stop(cfg)
    return {"deployment": started, **result}


def dashboard_app(cfg: ExperimentConfig):
    """The dashboard web app (app.ab.dashboard) over the configured experiment database and accounts."""
    from app.ab.dashboard import create_app
    from app.accounts import AccountStore

    accounts = AccountStore(cfg.accounts.url(cfg.paths.resolved_home()), session_hours=cfg.accounts.session_hours)
    store = store_of(cfg)
    refs = references(cfg)

    def report_of(name: str) -> dict[str, Any] | None:
        ab = experiment_config(cfg, store, name)
        if ab is None or not store.requests(name):
            return None
        from app.ab.report import analyse

        return analyse(store, ab, refs, None)

    return create_app(accounts, store.experiments, report_of)


def stop(cfg: ExperimentConfig) -> bool:
    from app.serving.manager import down

    return down(cfg)


__all__ = ["ab_test", "start", "status", "set_split", "report", "simulate", "stop", "preflight", "AbRunError",
           "experiment_config", "store_of", "references", "analyse_now"]
