"""The main job (``app run``, ``jobs/pipeline.py``): the stages in order under one MLflow parent run,
each stage's result reused while nothing it depends on changed.

A stage's **key** is a sha256 over: its name; every config section it reads (``Stage.reads`` in the
registry, checked against the code by tests/unit/test_layers.py); for each artifact it consumes that
an earlier stage of the pipeline produces, the **record id** of that stage's run; for the documents,
a content hash of ``data.docs_dir`` (the embedded corpus: its package's version). A finished stage
leaves a record, ``<home>/pipeline/<stage>/<key>.json`` (written whole, then renamed: a kill leaves
none or the previous one), holding a fresh record id, its summary and its MLflow run. On the next run
a stage whose key has a record is reused, not run: so a run killed after a stage continues at the
next one, a changed setting re-runs the stages that read it, and a stage run again (``--force``)
gets a new record id, which changes the keys of everything downstream of it.

In the main job a stage runs with ``pipeline.overrides[stage]`` applied (lighter settings for the later
stages, so the whole job fits its budget; the key includes them), and its time is reported against
``pipeline.budgets_s``. The A/B stage names its experiment after its key (``<ab.experiment>-<key>``), so
a re-run with another fine-tuned model starts a new experiment instead of adding to the old one's data.

A reused stage still appears under the parent run: a child run tagged ``reused`` with the record and
the original run's id, so the MLflow UI shows one lineage from documents to the last stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from app.acceptance import AcceptanceError, acceptance_table, failed_required, markdown
from app.config import ExperimentConfig
from app.errors import AppError
from app.stages import REGISTRY

# The main job, in order.
PIPELINE: list[str] = ["prepare_model", "build_dataset", "finetune", "evaluate", "quantize", "ab_test", "benchmark"]
PIPELINE_SUMMARY = ("The main job: the stages in order under one MLflow parent run; a stage whose config and "
                    "inputs are unchanged since its last run is reused (--force re-runs it).")


class MemoryPeak:
    """The machine's memory in use (MemTotal - MemAvailable, /proc/meminfo), sampled every ``every_s`` in a
    thread: each stage's peak, machine-wide (every process the stage starts: Ray workers, engines)."""

    def __init__(self, every_s: float = 1.0):
        import threading

        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="memory-peak")

    @staticmethod
    def used() -> int | None:
        try:
            info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
            return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024
        except (OSError, KeyError, ValueError):
            return None  # not Linux: not measured

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.used() or 0)

    def __enter__(self) -> MemoryPeak:
        self.peak = self.used() or 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def reset(self) -> int:
        """The peak since the last reset (GiB figures come from it), and start a new interval."""
        now = self.used() or 0
        peak, self.peak = max(self.peak, now), now
        return peak


class PipelineError(AppError, ValueError):
    """A pipeline selection that cannot run; the message says why."""


def records_dir(cfg: ExperimentConfig) -> Path:
    return cfg.paths.resolved_home() / "pipeline"


def documents_hash(cfg: ExperimentConfig) -> str:
    """Content hash of the documents the dataset is built from."""
    from app.tracking import hash_path

    docs = cfg.data.docs_dir
    if docs:
        path = Path(docs).expanduser()
        if not path.exists():
            raise PipelineError(f"data.docs_dir {docs} does not exist")
        return hash_path(path)
    import sys

    # The embedded corpus is the running Python's own documentation (app.data.corpus): its version.
    return "embedded:python-stdlib-{}.{}.{}".format(*sys.version_info[:3])


def stage_key(cfg: ExperimentConfig, name: str, upstream: dict[str, str], docs: str | None) -> tuple[str, dict]:
    """(key, what it was computed from) of stage ``name`` given the record ids of its inputs' producers."""
    stage = REGISTRY[name]
    raw = cfg.to_dict()
    basis = {"stage": name, "config": {s: raw.get(s) for s in stage.reads},
             "inputs": {a: upstream[a] for a in stage.consumes if a in upstream},
             **({"documents": docs} if "documents" in stage.consumes else {})}
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()
    return digest, basis


def read_record(cfg: ExperimentConfig, name: str, key: str) -> dict[str, Any] | None:
    path = records_dir(cfg) / name / f"{key}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return record if record.get("status") == "done" and record.get("key") == key else None


def write_record(cfg: ExperimentConfig, record: dict[str, Any]) -> Path:
    folder = records_dir(cfg) / record["stage"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['key']}.json"
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_settings(cfg: ExperimentConfig, order: list[str]) -> None:
    """pipeline.overrides and budgets_s name stages of the main job, and each override a section its stage reads."""
    from app.config import parse_override

    p = cfg.pipeline
    for what, names in (("pipeline.overrides", p.overrides), ("pipeline.budgets_s", p.budgets_s)):
        unknown = [n for n in names if n not in order]
        if unknown:
            raise PipelineError(f"{what} names {', '.join(unknown)}: not a stage of the main job ({', '.join(order)})")
    for stage, items in p.overrides.items():
        reads = REGISTRY[stage].reads
        idle = [t for t in items if parse_override(t)[0][0] not in reads]
        if idle:
            raise PipelineError(f"pipeline.overrides.{stage}: {', '.join(idle)} would change nothing: stage {stage} "
                                f"reads only {', '.join(reads)}")


def stage_config(cfg: ExperimentConfig, name: str, key: str) -> ExperimentConfig:
    """What stage ``name`` runs with in the main job (see the module docstring)."""
    run_cfg = cfg.stage_config(name)
    if name == "ab_test":
        ab = run_cfg.ab.model_copy(update={"experiment": f"{run_cfg.ab.experiment}-{key[:8]}"})
        run_cfg = run_cfg.model_copy(update={"ab": ab})
    return run_cfg


def select(order: list[str], *, from_stage: str | None = None, to_stage: str | None = None,
           only: list[str] | None = None, force: list[str] | None = None) -> tuple[list[str], set[str]]:
    """(stages to visit, stages to run even when a record exists), validated against ``order``."""
    for what, names in (("--from", [from_stage] if from_stage else []), ("--to", [to_stage] if to_stage else []),
                        ("--only", only or []), ("--force", force or [])):
        unknown = [n for n in names if n not in order]
        if unknown:
            raise PipelineError(f"{what} {', '.join(unknown)}: not a stage of the main job ({', '.join(order)})")
    if only and (from_stage or to_stage):
        raise PipelineError("--only cannot be combined with --from or --to")
    if only:
        chosen = [n for n in order if n in only]
    else:
        start = order.index(from_stage) if from_stage else 0
        end = order.index(to_stage) + 1 if to_stage else len(order)
        if start >= end:
            raise PipelineError(f"--from {from_stage} comes after --to {to_stage}")
        chosen = order[start:end]
    forced = set(force or []) | ({from_stage} if from_stage else set())
    return chosen, forced


def run_pipeline(cfg: ExperimentConfig, config_path: Path | None = None, *, from_stage: str | None = None,
                 to_stage: str | None = None, only: list[str] | None = None, force: list[str] | None = None,
                 progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or reuse) the main job's stages in order under one MLflow parent run."""
    import mlflow

    from app.tracking import start_run

    order = PIPELINE
    chosen, forced = select(order, from_stage=from_stage, to_stage=to_stage, only=only, force=force)
    check_settings(cfg, order)
    docs = documents_hash(cfg) if any("documents" in REGISTRY[n].consumes for n in chosen) else None
    upstream: dict[str, str] = {}  # artifact -> record id of the run that produced it
    results: dict[str, dict[str, Any]] = {}  # stage -> its summary (this run's, or the reused record's)
    summary: dict[str, Any] = {"stages": {}}
    started = time.time()
    with start_run(cfg, "pipeline", config_path, tags={"pipeline.stages": ",".join(chosen)}) as parent, \
            MemoryPeak() as memory:
        summary["mlflow_run_id"] = parent.info.run_id
        for name in order:
            if name not in chosen:
                # Not selected: what it produced last time (its latest record for this config) feeds the rest.
                key, _ = stage_key(cfg.stage_config(name), name, upstream, docs)
                record = read_record(cfg, name, key)
                if record is not None:
                    upstream.update({a: record["record_id"] for a in REGISTRY[name].produces})
                continue
            key, basis = stage_key(cfg.stage_config(name), name, upstream, docs)
            budget = cfg.pipeline.budgets_s.get(name)
            record = None if name in forced else read_record(cfg, name, key)
            if record is not None:
                progress(f"== stage {name}: reused (record {record['record_id'][:8]}, run {record['mlflow_run_id']}, "
                         f"finished {record['finished']})")
                with mlflow.start_run(run_name=f"{name} (reused)", nested=True):
                    mlflow.set_tags({"pipeline.stage": name, "pipeline.reused": "true", "pipeline.key": key,
                                     "pipeline.record_id": record["record_id"],
                                     "pipeline.original_run_id": record["mlflow_run_id"] or ""})
                results[name] = record["result"]
                summary["stages"][name] = {"status": "reused", "key": key, "record_id": record["record_id"],
                                           "mlflow_run_id": record["mlflow_run_id"], "seconds": 0.0,
                                           "budget_s": budget, "first_run_seconds": record.get("seconds")}
            else:
                progress(f"== stage {name}: running (key {key[:12]})")
                memory.reset()
                t0 = time.time()
                result = REGISTRY[name].run(stage_config(cfg, name, key), config_path, progress=progress)
                record = {"stage": name, "key": key, "record_id": uuid.uuid4().hex, "status": "done",
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - t0, 1),
                          "mlflow_run_id": _run_id(result), "parent_run_id": parent.info.run_id,
                          "basis": basis, "result": result}
                write_record(cfg, record)
                results[name] = result
                summary["stages"][name] = {"status": "ran", "key": key, "record_id": record["record_id"],
                                           "mlflow_run_id": record["mlflow_run_id"], "seconds": record["seconds"],
                                           "budget_s": budget, "peak_memory_gib": round(memory.reset() / 2**30, 2),
                                           "result": result}
                over = f", OVER its budget of {budget:.0f} s" if budget and record["seconds"] > budget else \
                    (f" (budget {budget:.0f} s)" if budget else "")
                progress(f"== stage {name}: done in {record['seconds']:.0f} s{over}")
                mlflow.log_metrics({f"pipeline.{name}.seconds": record["seconds"],
                                    f"pipeline.{name}.peak_memory_gib": summary["stages"][name]["peak_memory_gib"]})
            upstream.update({a: record["record_id"] for a in REGISTRY[name].produces})
            mlflow.set_tag(f"pipeline.{name}", summary["stages"][name]["status"])
        ran = [n for n, s in summary["stages"].items() if s["status"] == "ran"]
        if "ab_test" in ran and "benchmark" not in ran and not cfg.stage_config("ab_test").ab.simulation.stop_service:
            from app.serving.manager import down

            progress("removing the A/B experiment's application (left up for a benchmark stage that did not run)")
            down(cfg)
        summary["seconds"] = round(time.time() - started, 1)
        mlflow.log_metric("pipeline.seconds", summary["seconds"])
        mlflow.log_dict({n: {k: v for k, v in s.items() if k != "result"} for n, s in summary["stages"].items()},
                        "pipeline/stages.json")
        rows = acceptance_table(cfg, results, {n: s["mlflow_run_id"] for n, s in summary["stages"].items()})
        summary["acceptance"] = rows
        table = markdown(rows) + "\n" + times_markdown(summary, cfg.pipeline.total_budget_s)
        out = records_dir(cfg) / "acceptance" / f"{time.strftime('%Y%m%d-%H%M%S')}-{parent.info.run_id[:8]}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table, encoding="utf-8")
        mlflow.log_text(table, "acceptance/table.md")
        mlflow.log_dict(rows, "acceptance/table.json")
        mlflow.log_metrics({"acceptance.passed": sum(r["status"] == "pass" for r in rows),
                            "acceptance.criteria": len(rows)})
        progress(table + f"(also {out})")
        failed = failed_required(rows, chosen)
        if failed:
            raise AcceptanceError("required acceptance criteria not met: " + "; ".join(
                f"{r['id']} ({r['status']}: {r['figure']}; {r['why']})" for r in failed)
                + f". The table: {out}; acceptance.required lists the required ones")
    return summary


def times_markdown(summary: dict[str, Any], total_budget_s: float) -> str:
    """Each stage's measured time against its budget (reused stages: 0 s here, their first run's time shown)."""
    lines = ["## Stage times", "", "Peak memory: the machine's memory in use (every process) at its highest during "
             "the stage.", "", "| stage | status | seconds | budget | within | peak memory GiB |",
             "|---|---|---|---|---|---|"]
    for name, s in summary["stages"].items():
        secs = s["seconds"] if s["status"] == "ran" else f"0 (reused; {s.get('first_run_seconds') or '?'} when run)"
        budget = s.get("budget_s")
        within = "-" if not budget or s["status"] != "ran" else ("yes" if s["seconds"] <= budget else "**no**")
        lines.append(f"| {name} | {s['status']} | {secs} | {f'{budget:.0f}' if budget else '-'} | {within} | "
                     f"{s.get('peak_memory_gib', '-')} |")
    total = summary["seconds"]
    lines.append(f"| **total** | | {total:.0f} | {total_budget_s:.0f} | {'yes' if total <= total_budget_s else '**no**'} | |")
    return "\n".join(lines) + "\n"


def _run_id(result: Any) -> str | None:
    if isinstance(result, dict):
        for k in ("mlflow_run_id", "run_id"):
            if isinstance(result.get(k), str):
                return result[k]
    return None
