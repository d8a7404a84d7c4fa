"""DeepSpeed configuration, learning-rate schedule and precision: plain functions of the config."""

from __future__ import annotations

import math
from typing import Any, Callable

from app.train.config import TrainingConfig

# Deferred imports: torch is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


def warmup_steps(t: TrainingConfig, max_steps: int | None = None) -> int:
    return math.ceil(t.warmup_ratio * (max_steps or t.max_steps))


def lr_lambda(t: TrainingConfig, max_steps: int | None = None) -> Callable[[int], float]:
    """Multiplier of the peak lr after ``step`` optimizer steps: linear warmup from 0, then linear,
    cosine (half period, to 0 at max_steps) or constant."""
    total = max_steps or t.max_steps
    warm = warmup_steps(t, total)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if t.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if t.scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def resolve_precision(requested: str, use_gpu: bool) -> str:
    """bf16 where the device computes it natively, else fp32 (for ``precision: auto``)."""
    if requested != "auto":
        return requested
    import torch

    if use_gpu:
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
    try:  # oneDNN's own check: AVX-512 BF16 or AMX
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def deepspeed_config(t: TrainingConfig, precision: str, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict of the training section (precision already resolved)."""
    zero: dict[str, Any] = {"stage": t.zero_stage}
    if t.zero_stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=t.use_gpu)
    if t.zero_stage == 3:
        # Gathered 16-bit weights are not needed on save: the adapter is gathered explicitly.
        zero.update(stage3_gather_16bit_weights_on_model_save=False)
    if t.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": t.use_gpu}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.micro_batch_size * t.grad_accum_steps * world_size,
        "gradient_clipping": t.grad_clip or 0.0,
        "zero_optimization": zero,
        # The optimizer is torch's AdamW over the adapter weights (DeepSpeed's fused Adam needs CUDA).
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return cfg
