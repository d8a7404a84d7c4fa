"""INT4 weight arithmetic shared by quantization-aware training and the quantize stage.

:func:`fake_quantize` is round-to-nearest W4A16 exactly as compressed-tensors computes it when
llm-compressor packs a checkpoint with min-max scales (its ``QuantizationModifier``, the packer of
the QAT variant): the range always includes 0, scale and zero point are computed and applied in the
weight's own dtype (bf16 in training and in the stored models). Checked against a real packed
checkpoint in ``tests/unit/quantize``: every code equal. torchao's fake quantizer was measured
against the same checkpoint and differs on 0.8% (symmetric) and 2.3% (asymmetric) of the codes: it
computes in float32 and, asymmetric, fits the range without forcing 0 into it (tinygemm style).
"""

from __future__ import annotations

import re
from typing import Any

# Deferred import: torch, inside the functions.


def is_ignored(name: str, ignore: list[str] | tuple[str, ...]) -> bool:
    """llm-compressor's matching of ``ignore`` entries: a module name (or its last part), or ``re:<regex>``."""
    for pattern in ignore:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif name == pattern or name.endswith("." + pattern):
            return True
    return False


def int4_codes(weight: Any, group_size: int, symmetric: bool, num_bits: int = 4) -> tuple[Any, Any, Any]:
    """(codes, zero points, scales) per group of ``group_size`` input channels, grouped as
    ``(out, in / group_size, group_size)``: round-to-nearest with min-max scales, the range always
    including 0 (scale = max|w| / 7.5 symmetric, (max - min) / 15 with an integer zero point
    asymmetric), computed in the weight's dtype as compressed-tensors computes it."""
    import torch

    out_f, in_f = weight.shape
    if in_f % group_size:
        raise ValueError(f"group size {group_size} does not divide the input width {in_f}")
    w = weight.reshape(out_f, in_f // group_size, group_size)
    qmin, qmax = -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1
    lo = torch.clamp(w.amin(dim=-1, keepdim=True), max=0)
    hi = torch.clamp(w.amax(dim=-1, keepdim=True), min=0)
    tiny = torch.finfo(weight.dtype).eps
    if symmetric:
        scale = torch.maximum(lo.abs(), hi) / ((qmax - qmin) / 2)
        scale = torch.where(scale == 0, torch.full_like(scale, tiny), scale)
        zp = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        scale = torch.where(scale == 0, torch.full_like(scale, tiny), scale)
        zp = torch.round(torch.clamp(qmin - lo / scale, qmin, qmax))
    return torch.clamp(torch.round(w / scale + zp), qmin, qmax), zp, scale


def fake_quantize(weight: Any, group_size: int, symmetric: bool, num_bits: int = 4) -> Any:
    """:func:`int4_codes` dequantized: the INT4 weight (same shape and dtype as ``weight``)."""
    q, zp, scale = int4_codes(weight, group_size, symmetric, num_bits)
    return ((q - zp) * scale).reshape(weight.shape)


def fake_quantize_ste(weight: Any, group_size: int, symmetric: bool, num_bits: int = 4) -> Any:
    """:func:`fake_quantize` in the forward pass, identity in the backward (straight-through
    estimator): what quantization-aware training puts under the LoRA adapters."""
    with_grad = weight
    return with_grad + (fake_quantize(weight.detach(), group_size, symmetric, num_bits) - weight.detach())
