"""`app train tune`: Ray Tune over LoRA rank, alpha and learning rate, each trial a short Ray Train run.

Every trial is the same training loop as `app train run` (same data, validation and checkpoints)
with its own ``lora.r``, ``lora.alpha`` and ``training.lr``, a child MLflow run of the search's
run, and its validation metrics streamed to Tune, whose ASHA scheduler stops trailing trials at
each validation. The objective is ``training.checkpoint_metric``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from app import cluster
from app.config import ExperimentConfig
from app.model_store import check_target_modules, model_fingerprint, model_store
from app.tracking import STAGE_TAG, connect, log_table, start_run
from app.train.config import CHECKPOINT_METRICS
from app.train.run import (
    TrainingError,
    build_trainer,
    dataset_dir,
    fingerprint,
    generation_sample,
    tokenized_datasets,
    train_root,
)

# Deferred imports: mlflow, ray are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

TRIAL_TAG = "app.tune_trial"


def trial_config(cfg: ExperimentConfig, params: dict[str, Any], run_name: str) -> ExperimentConfig:
    """The experiment config of one trial: the sampled values, and the search's short schedule."""
    tc = cfg.tune
    raw = cfg.to_dict()
    raw["lora"].update(r=int(params["r"]), alpha=float(params["alpha"]))
    raw["training"].update(
        lr=float(params["lr"]), max_steps=tc.max_steps, eval_every=tc.eval_every, num_workers=tc.num_workers,
        cpus_per_worker=tc.cpus_per_worker, val_generation_samples=tc.val_generation_samples, eval_at_start=False,
        keep_checkpoints=1, compare_on_validation=False, register_model=False, run_name=run_name, init_from=None,
        init_weights_only=False)
    return ExperimentConfig.model_validate(raw)


def search_space(cfg: ExperimentConfig) -> dict[str, Any]:
    from ray import tune

    tc = cfg.tune
    return {"r": tune.choice(tc.r), "alpha": tune.choice(tc.alpha), "lr": tune.loguniform(*tc.lr)}


def tune_lora(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the search; log every trial; return the best trial's settings as overrides."""
    import mlflow
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tc, metric = cfg.tune, cfg.training.checkpoint_metric
    mode = CHECKPOINT_METRICS[metric]
    connect(cfg)
    base = model_store(cfg).resolve(cfg.model, progress=progress)
    check_target_modules(cfg.lora.target_modules, base.path)
    data_path = dataset_dir(cfg)
    model_sha = model_fingerprint(base)
    resources = cluster.connect(cfg.ray)
    if resources.get("CPU", 0) < tc.num_workers * tc.cpus_per_worker:
        raise TrainingError(f"the Ray cluster has {resources.get('CPU', 0):.0f} CPUs; a trial needs "
                            f"{tc.num_workers * tc.cpus_per_worker} (tune.num_workers x tune.cpus_per_worker)")
    cluster.quiet_data_context()
    probe = trial_config(cfg, {"r": tc.r[0], "alpha": tc.alpha[0], "lr": tc.lr[0]}, "probe")  # validates early
    datasets, counts = tokenized_datasets(probe, data_path, base.path, progress)
    val_gen = generation_sample(data_path, tc.val_generation_samples, cfg.seed)
    search = f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    progress(f"search {search}: {tc.num_samples} trials of {tc.max_steps} steps over r {tc.r}, alpha {tc.alpha}, "
             f"lr {tc.lr[0]:g}..{tc.lr[1]:g} (objective {metric}, {mode}; scheduler {tc.scheduler})")

    with start_run(cfg, "tune_lora", config_path, run_name=search,
                   inputs={"dataset": data_path.name, "model": model_sha},
                   tags={"dataset.version": data_path.name, **({"rerun_of": rerun_of} if rerun_of else {})}) as parent:
        uri, experiment_id, parent_id = mlflow.get_tracking_uri(), parent.info.experiment_id, parent.info.run_id

        def trial(params: dict[str, Any]) -> None:
            from mlflow import MlflowClient

            trial_id = tune.get_context().get_trial_id()
            run_name = f"{search}-{trial_id}"
            tcfg = trial_config(cfg, params, run_name)
            client = MlflowClient(uri)
            child = client.create_run(experiment_id, run_name=f"trial-{trial_id}", tags={
                "mlflow.parentRunId": parent_id, STAGE_TAG: "tune_trial", TRIAL_TAG: trial_id,
                "train.run_name": run_name})
            for k, v in {"lora.r": params["r"], "lora.alpha": params["alpha"], "training.lr": params["lr"],
                         "training.max_steps": tc.max_steps}.items():
                client.log_param(child.info.run_id, k, v)
            loop_args = {"config": tcfg.to_dict(), "model_path": str(base.path),
                         "fingerprint": fingerprint(tcfg, model_sha), "val_generation": val_gen, "mlflow_uri": uri,
                         "mlflow_run_id": child.info.run_id, "init_from": None, "run_name": run_name}
            status = "FAILED"
            try:
                build_trainer(tcfg, datasets, loop_args, run_name, callbacks=[TuneReportCallback()]).fit()
                status = "FINISHED"
            finally:
                client.set_terminated(child.info.run_id, status)

        scheduler = (ASHAScheduler(time_attr="training_iteration", grace_period=tc.grace_period, reduction_factor=2,
                                   max_t=max(1, tc.max_steps // tc.eval_every + 1))
                     if tc.scheduler == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            # The trial's own actor only waits on its Train run, whose workers hold the CPUs: it asks for
            # no CPU (Tune refuses an empty request, so a little memory), else trials would need
            # workers x cpus + 1 CPUs and a 2-core machine could not run one.
            tune.with_resources(trial, {"memory": 256 * 2**20}),
            param_space=search_space(cfg),
            tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=tc.num_samples, scheduler=scheduler,
                                        max_concurrent_trials=tc.max_concurrent_trials),
            run_config=tune.RunConfig(name=search, storage_path=str(train_root(cfg) / "tune")),
        )
        started = time.time()
        grid = tuner.fit()
        rows = []
        for r in grid:
            m = r.metrics or {}
            rows.append({"trial": (m.get("trial_id") or ""), "r": r.config.get("r"), "alpha": r.config.get("alpha"),
                         "lr": r.config.get("lr"), metric: m.get(metric), "val_loss": m.get("val_loss"),
                         "validations": m.get("training_iteration"), "steps": m.get("step"),
                         "error": str(r.error).splitlines()[0][:300] if r.error else ""})
        _close_stopped_trials(parent_id)
        table = pd.DataFrame(rows).sort_values(metric, ascending=mode == "min", na_position="last")
        log_table(table.to_dict("records"), "tune/trials.json")
        ok = table.dropna(subset=[metric])
        if ok.empty:
            raise TrainingError(f"no trial of {search} reported {metric}; errors: "
                                + "; ".join(e for e in table["error"] if e)[:1500])
        best = ok.iloc[0]
        overrides = [f"lora.r={int(best['r'])}", f"lora.alpha={best['alpha']:g}", f"training.lr={best['lr']:.3g}"]
        best_run = f"{search}-{best['trial']}"
        mlflow.log_metrics({f"best_{metric}": float(best[metric]), "trials": len(table),
                            "trials_failed": int((table["error"] != "").sum()), "search_seconds": time.time() - started})
        mlflow.set_tags({"tune.best": " ".join(overrides)})
        progress(table.to_string(index=False))
        progress(f"best: {' '.join('--set ' + o for o in overrides)} ({metric} {best[metric]:.4f}); its "
                 f"checkpoints: training.init_from={best_run}/best")
        return {"run_id": parent_id, "search": search, "trials": table.to_dict("records"), "best_run": best_run,
                "best": {"r": int(best["r"]), "alpha": float(best["alpha"]), "lr": float(best["lr"]),
                         metric: float(best[metric])},
                "overrides": overrides, "seconds": round(time.time() - started, 1), **counts}


def _close_stopped_trials(parent_id: str) -> None:
    """Trials that the scheduler stopped never reach their own ``finally``: mark their runs KILLED."""
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(parent_id)
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    for child in children:
        if child.info.status == "RUNNING":
            client.set_terminated(child.info.run_id, "KILLED")
