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

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from app.config import ExperimentConfig

StageFn = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str  # one line, for --help
    target: str  # "module:function"; imported when the stage runs, not with the registry (see below)
    reads: tuple[str, ...]  # config sections / top-level fields the stage's code reads
    consumes: tuple[str, ...]  # artifacts it needs (produced by an earlier stage or given by the user)
    produces: tuple[str, ...]  # artifacts it leaves for later stages

    def run(self, cfg: ExperimentConfig, config_path: Path | None = None, **kw: Any) -> dict[str, Any]:
        # Deferred for start-up time: importing every stage (Ray Data, Ray Train, sklearn, vLLM
        # helpers) takes about 9 s on 2 cores; a job or command loads only the stage it runs.
        # tests/unit/test_layers.py counts these targets as imports of this module.
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)(cfg, config_path, **kw)

# Artifacts: base_model (a store entry), documents (data.docs_dir or the embedded corpus),
# dataset (a dataset build), finetuned_model (a store entry with its adapter), tune_result (the best
# LoRA settings), eval_report (an evaluation run), serve_config (the tuned Serve config),
# quantized_models (INT4 store entries), quantize_report (their analysis and accuracy drops).
REGISTRY: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare_model", "Put the base model into the store, probe it on a Ray worker, record it in MLflow.",
          "app.prepare.run:prepare_model", reads=("model", "lora", "ray"),
          consumes=(), produces=("base_model",)),
    Stage("build_dataset", "Domain QA dataset on Ray Data: extracted + LLM pairs, quality checks, review, splits.",
          "app.data.build:build_dataset", reads=("seed", "model", "ray", "data", "training", "serving"),
          consumes=("base_model", "documents"), produces=("dataset",)),
    Stage("serve_sweep", "Serving-parameter sweep on Ray Serve: each setting loaded at rising concurrency.",
          "app.serving.sweep:run_sweep", reads=("seed", "model", "ray", "serving", "serve_sweep"),
          consumes=("base_model",), produces=("serve_config",)),
    Stage("finetune", "LoRA fine-tuning on Ray Train + DeepSpeed, checkpoints chosen by validation metrics.",
          "app.train.run:finetune", reads=("name", "seed", "model", "ray", "data", "prompt", "lora", "training", "evaluation"),
          consumes=("base_model", "dataset"), produces=("finetuned_model",)),
    Stage("tune_lora", "Ray Tune search over LoRA rank, alpha and learning rate.",
          "app.train.tune:tune_lora", reads=("name", "seed", "model", "ray", "data", "prompt", "lora", "training", "evaluation", "tune"),
          consumes=("base_model", "dataset"), produces=("tune_result",)),
    Stage("evaluate", "Evaluation of several models: metrics with intervals, paired tests, a report.",
          "app.eval.run:evaluate", reads=("seed", "model", "ray", "data", "prompt", "training", "evaluation", "serving"),
          consumes=("base_model", "finetuned_model", "dataset"), produces=("eval_report",)),
    # Runs the finetune stage (QAT) and the evaluate stage (accuracy drops): it reads what they read.
    Stage("quantize", "INT4 variants (AWQ, GPTQ via llm-compressor; QAT), error analysis, accuracy drop vs bf16.",
          "app.quantize.run:quantize_models",
          reads=("name", "seed", "model", "ray", "data", "prompt", "lora", "training", "evaluation", "serving",
                 "quantize"),
          consumes=("base_model", "finetuned_model", "dataset"), produces=("quantized_models", "quantize_report")),
    Stage("ab_test", "Shadow and A/B test on Ray Serve: traffic split, simulated users, statistics, the winner.",
          "app.ab.run:ab_test",
          reads=("name", "seed", "model", "ray", "data", "prompt", "evaluation", "serving", "ab"),
          consumes=("base_model", "finetuned_model", "dataset"), produces=("ab_report",)),
    # The benchmarks load an endpoint that is already running (`app serve up`, `app ab start`).
    Stage("bench_load", "Locust load on the running endpoint: a bounded profile, LLM latency, memory, recovery.",
          "app.bench.load:load_test",
          reads=("seed", "model", "ray", "data", "prompt", "evaluation", "serving", "ab", "bench"),
          consumes=("base_model", "dataset"), produces=("bench_load",)),
    Stage("bench_sweep", "Concurrency sweep of the running endpoint until saturation (vLLM's metric definitions).",
          "app.bench.sweep:sweep",
          reads=("seed", "model", "ray", "data", "prompt", "evaluation", "serving", "ab", "bench"),
          consumes=("base_model", "dataset"), produces=("bench_sweep",)),
    Stage("bench_compare", "Interleaved comparisons of served models on the running endpoint, ratios with spread.",
          "app.bench.compare:compare",
          reads=("seed", "model", "ray", "data", "prompt", "evaluation", "serving", "ab", "bench"),
          consumes=("base_model", "dataset"), produces=("bench_compare",)),
    # Runs the evaluation stage (quality) and the serve sweep (tuned vs default): it reads what they read.
    Stage("bench_suites", "Comparisons run by the stage or benchmark that owns them: quality, serving, engines, INT4.",
          "app.bench.suites:run_suites",
          reads=("name", "seed", "model", "ray", "data", "prompt", "lora", "training", "evaluation", "serving",
                 "serve_sweep", "ab", "bench"),
          consumes=("base_model", "finetuned_model", "dataset", "quantized_models"), produces=("bench_suites",)),
    Stage("bench_report", "The performance report: targets, rule-based recommendations, plots, in MLflow.",
          "app.bench.report:report",
          reads=("seed", "model", "ray", "data", "prompt", "evaluation", "serving", "ab", "bench"),
          consumes=("bench_load", "bench_sweep", "bench_compare", "bench_suites"), produces=("bench_report",)),
    Stage("benchmark", "Every benchmark: the load profiles, the sweep, the comparisons, the suites, the report.",
          "app.bench.run:run_all",
          reads=("name", "seed", "model", "ray", "data", "prompt", "lora", "training", "evaluation", "serving",
                 "serve_sweep", "ab", "bench"),
          consumes=("base_model", "finetuned_model", "dataset", "quantized_models"), produces=("bench_report",)),
)}

# Stages `app rerun` can re-run, by the `app.stage` tag of their MLflow run.
STAGES: dict[str, StageFn] = {name: s.run for name, s in REGISTRY.items()}
