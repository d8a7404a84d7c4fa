"""The stage registry: every stage's function, the config it reads and the artifacts it passes on.

Every stage takes a validated :class:`ExperimentConfig` (and the file it came from, for the
record), opens one MLflow run, and returns a summary dict. ``jobs/*.py``, the CLI, ``app rerun``
and the pipeline find stages here and nowhere else; nothing under the stages imports this module
(``docs/architecture.md``).

``reads`` names every config section (or top-level field) the stage's code reads, so a resumable
pipeline can key a stage's cached result on exactly those plus the content of what it
``consumes``; ``tests/unit/test_layers.py`` checks the declaration against the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from app.config import ExperimentConfig
from app.data.build import build_dataset
from app.eval.run import evaluate
from app.prepare.run import prepare_model
from app.serving.sweep import run_sweep
from app.train.run import finetune
from app.train.tune import tune_lora

StageFn = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    run: StageFn
    reads: tuple[str, ...]  # config sections / top-level fields the stage's code reads
    consumes: tuple[str, ...]  # artifacts it needs (produced by an earlier stage or given by the user)
    produces: tuple[str, ...]  # artifacts it leaves for later stages

    @property
    def summary(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]


# Artifacts: base_model (a store entry), documents (data.docs_dir or the embedded corpus),
# dataset (a dataset build), finetuned_model (a store entry with its adapter), tune_result (the best
# LoRA settings), eval_report (an evaluation run), serve_config (the tuned Serve config).
REGISTRY: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare_model", prepare_model, reads=("model", "lora", "ray"),
          consumes=(), produces=("base_model",)),
    Stage("build_dataset", build_dataset, reads=("seed", "model", "ray", "data", "training", "serving"),
          consumes=("base_model", "documents"), produces=("dataset",)),
    Stage("serve_sweep", run_sweep, reads=("seed", "model", "ray", "serving", "serve_sweep"),
          consumes=("base_model",), produces=("serve_config",)),
    Stage("finetune", finetune, reads=("name", "seed", "model", "ray", "data", "prompt", "lora", "training", "evaluation"),
          consumes=("base_model", "dataset"), produces=("finetuned_model",)),
    Stage("tune_lora", tune_lora, reads=("seed", "model", "ray", "data", "prompt", "lora", "training", "evaluation", "tune"),
          consumes=("base_model", "dataset"), produces=("tune_result",)),
    Stage("evaluate", evaluate, reads=("seed", "model", "ray", "data", "prompt", "training", "evaluation", "serving"),
          consumes=("base_model", "finetuned_model", "dataset"), produces=("eval_report",)),
)}

# Stages `app rerun` can re-run, by the `app.stage` tag of their MLflow run.
STAGES: dict[str, StageFn] = {name: s.run for name, s in REGISTRY.items()}
# The main job, in order.
PIPELINE: list[str] = ["prepare_model", "build_dataset", "finetune", "evaluate"]


def run_pipeline(cfg: ExperimentConfig, config_path: Path | None = None, *,
                 progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The main job: every stage built so far, in order, each its own MLflow run."""
    results = []
    for name in PIPELINE:
        progress(f"== stage {name}")
        results.append(REGISTRY[name].run(cfg, config_path, progress=progress))
    return results
