"""The fine-tuning stage's config: LoRA, training, and the Ray Tune search."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from app.sections import Section, duplicates, int4_group_size

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Section):
    r: PositiveInt = Field(16, description="LoRA rank.")
    alpha: PositiveFloat = Field(32, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input, in [0, 1).")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        min_length=1,
        description="Linear modules that get adapters; checked against the chosen model's module names.",
    )
    bias: Literal["none", "all", "lora_only"] = "none"

    @field_validator("target_modules")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dupes = duplicates(v)
        if dupes:
            raise ValueError(f"duplicate target modules: {dupes}")
        return v


CHECKPOINT_METRICS = {  # metric -> which way is better
    "val_token_f1": "max", "val_exact_match": "max", "val_domain_accuracy": "max",
    "val_semantic_similarity": "max", "val_loss": "min",
}


# Training fields that may change when a run resumes under the same name: they do not change what
# the saved state means (the schedule's length may: see the resume check in app.train.run).
RESUMABLE_CHANGES = ("max_steps", "eval_every", "keep_checkpoints", "max_failures", "log_every",
                     "val_generation_samples", "val_loss_samples", "val_max_new_tokens", "val_batch_size",
                     "compare_on_validation", "compare_samples", "register_model", "output_model", "run_name", "init_from",
                     "init_weights_only", "eval_at_start", "cpus_per_worker")


class QatConfig(Section):
    """The INT4 scheme quantization-aware training fakes (``training.qat``); ``app quantize`` sets it
    from its own section so the fake quantizer and the packed variant agree."""

    scheme: Literal["W4A16", "W4A16_ASYM"] = Field("W4A16_ASYM", description="W4A16 symmetric, or with zero points.")
    group_size: PositiveInt = Field(64, description="Input channels sharing a scale (must divide every layer's width).")
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"], description="Layers left unquantized.")

    _group_size = field_validator("group_size")(classmethod(lambda cls, v: int4_group_size(v)))

    @property
    def symmetric(self) -> bool:
        return self.scheme == "W4A16"


class TrainingConfig(Section):
    """LoRA fine-tuning on Ray Train with DeepSpeed: optimizer, schedule, scale, validation, checkpoints."""

    lr: PositiveFloat = Field(2e-4, description="Peak learning rate (> 0).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay on the adapter weights.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1).")
    eps: PositiveFloat = Field(1e-8, description="AdamW epsilon.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "cosine", description="Learning-rate decay after warmup (to 0 at max_steps; constant stays at lr).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of max_steps with linear warmup from 0.")
    max_steps: PositiveInt = Field(200, description="Optimizer steps; the data repeats in epochs as needed.")
    micro_batch_size: PositiveInt = Field(
        4, description="Sequences per worker per forward pass (packed sequences when packing is on).")
    grad_accum_steps: PositiveInt = Field(1, description="Micro-batches per optimizer step on each worker.")
    grad_clip: PositiveFloat | None = Field(1.0, description="Max global gradient norm; None disables clipping.")
    num_workers: PositiveInt = Field(2, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); False: CPU workers (gloo).")
    cpus_per_worker: PositiveInt = Field(
        1, description="CPUs reserved per worker; on CPU also its torch thread count.")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state and step on the CPU (stages 1-3).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the worker's device supports it (GPUs with bf16, CPUs with "
        "AVX-512 BF16 or AMX), else fp32. bf16/fp16 run the model in half precision with fp32 master weights.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (less memory, ~30% slower).")
    max_seq_len: PositiveInt | None = Field(
        None, description="Longest training sequence in tokens; longer examples are dropped and counted. "
        "None: model.max_seq_len.")
    context_distractors: int = Field(
        0, ge=0, le=3, description="Passages of other training chunks (BM25 on the question) added to each "
        "training example's context, in random order with its own passage, which stays whole within "
        "prompt.max_context_tokens: evaluation with retrieval gives the model several passages, the dataset one.")
    packing: bool = Field(
        False, description="Pack several examples into each sequence of max_seq_len tokens (no padding; "
        "attention stays within each example).")
    eval_every: PositiveInt = Field(50, description="Validate and checkpoint every N optimizer steps (and at the end).")
    eval_at_start: bool = Field(
        True, description="Validate before the first step: the adapter starts at zero, so this scores the base model "
        "exactly as the checkpoints are scored.")
    val_loss_samples: PositiveInt | None = Field(
        None, description="Validation examples for the loss (the first N of the split); None: all.")
    val_generation_samples: int = Field(
        32, ge=0, description="Validation examples answered greedily for the generation metrics (a fixed, "
        "topic-stratified sample); 0: loss only.")
    val_max_new_tokens: PositiveInt = Field(64, description="Answer length limit for validation generation.")
    val_batch_size: PositiveInt = Field(8, description="Prompts per generate call in validation.")
    checkpoint_metric: Literal[
        "val_token_f1", "val_exact_match", "val_domain_accuracy", "val_semantic_similarity", "val_loss"
    ] = Field("val_domain_accuracy", description="Checkpoints are ranked by this validation metric "
              "(val_domain_accuracy follows evaluation.domain_rule).")
    keep_checkpoints: PositiveInt = Field(2, description="Best checkpoints kept by the validation metric.")
    max_failures: int = Field(
        2, ge=-1, description="Automatic restarts from the latest checkpoint after a worker or node dies; -1: no limit.")
    log_every: PositiveInt = Field(1, description="Log training metrics to MLflow every N steps.")
    run_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Ray Train run name under <home>/train/. Running again with the same name resumes from its "
        "latest checkpoint. None: <experiment name>-<hash of the settings that define the run>.")
    init_from: str | None = Field(
        None, description="Start from a checkpoint: a folder, or RUN/step-NNNNNN, RUN/latest or RUN/best under "
        "<home>/train/. Resumes optimizer, schedule and step when compatible.")
    init_weights_only: bool = Field(
        False, description="With init_from: take only the adapter weights; optimizer, schedule and step start fresh.")
    output_model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Model-store name of the merged fine-tuned model; None: <model.name>-lora.")
    register_model: bool = Field(True, description="Register the best model in the MLflow model registry.")
    compare_on_validation: bool = Field(
        True, description="After training, answer the validation split with the base and the fine-tuned model the "
        "same way (greedy, val_max_new_tokens, model.dtype) and report both domain accuracies.")
    qat: QatConfig | None = Field(
        None, description="Quantization-aware training: every non-ignored Linear computes with the INT4 "
        "fake-quantized merged weight (base + adapter) of this scheme (app/train/qat.py); None: off. "
        "`app quantize run` sets it for its QAT variant.")
    compare_samples: PositiveInt | None = Field(
        None, description="Validation examples in that comparison (a fixed topic-stratified sample); None: all.")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision fp16 needs GPUs (use bf16 or fp32 on CPU)")
        if self.init_weights_only and not self.init_from:
            raise ValueError("init_weights_only needs init_from")
        if self.val_generation_samples == 0 and self.checkpoint_metric != "val_loss":
            raise ValueError(f"checkpoint_metric {self.checkpoint_metric} comes from generated answers: set "
                             "val_generation_samples > 0, or checkpoint_metric: val_loss")
        return self


class TuneConfig(Section):
    """Ray Tune search over LoRA rank, alpha and learning rate; each trial is a short training run."""

    num_samples: PositiveInt = Field(4, description="Trials sampled from the search space.")
    max_concurrent_trials: PositiveInt = Field(1, description="Trials running at once (each takes its own workers).")
    max_steps: PositiveInt = Field(30, description="Optimizer steps per trial.")
    eval_every: PositiveInt = Field(10, description="Validation every N steps in a trial (what the scheduler sees).")
    num_workers: PositiveInt = Field(1, description="Ray Train workers per trial.")
    cpus_per_worker: PositiveInt = Field(2, description="CPUs per trial worker.")
    r: list[PositiveInt] = Field(default_factory=lambda: [8, 16, 32], min_length=1, description="LoRA ranks to choose from.")
    alpha: list[PositiveFloat] = Field(
        default_factory=lambda: [16, 32, 64], min_length=1, description="LoRA alphas to choose from.")
    lr: tuple[PositiveFloat, PositiveFloat] = Field(
        (5e-5, 1e-3), description="Learning rate range, sampled log-uniformly [low, high].")
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha: stop trials that trail at each validation (successive halving); fifo: run all.")
    grace_period: PositiveInt = Field(1, description="ASHA: validations a trial gets before it can be stopped.")
    val_generation_samples: int = Field(16, ge=0, description="Validation generation sample per trial.")

    @field_validator("lr")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"lr range must be [low, high], got {list(v)}")
        return v
