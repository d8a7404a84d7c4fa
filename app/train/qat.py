"""Quantization-aware LoRA training: INT4 fake quantization of the merged weight under each adapter.

With ``training.qat`` set, every Linear layer that the INT4 variant will quantize computes its
output from ``fake_quantize(W + s * B @ A)`` (:mod:`app.int4`: round-to-nearest W4A16 with the
same group size, symmetry and arithmetic as the packer), with a straight-through estimator so the
gradient reaches the adapter. Quantizing the merged weight, not only the frozen base under an
unquantized adapter, trains the adapter for exactly the weights that will be served: the merged
checkpoint packed by ``app quantize`` (round-to-nearest, min-max) holds the same INT4 codes as the
training forward. Layers without an adapter are fake-quantized too (their weight is frozen). The
LoRA dropout is not applied in this mode (the adapter acts inside the quantizer, not beside it).
Validation during the run scores the fake-quantized model, i.e. the INT4 model.
"""

from __future__ import annotations

import types
from typing import Any

from app.int4 import fake_quantize_ste, is_ignored
from app.train.config import QatConfig

# Deferred imports: torch, peft are imported inside the functions that use them (Ray workers).


def _quantized(module: Any, compute: Any) -> Any:
    """The fake-quantized weight; under no_grad in eval mode (validation generation, one forward per
    token) it is computed once and kept until the next training forward."""
    import torch

    if module.training or torch.is_grad_enabled():
        module._qat_cache = None
        return compute()
    if getattr(module, "_qat_cache", None) is None:
        module._qat_cache = compute().detach()
    return module._qat_cache


def _lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch.nn.functional as F

    base = self.base_layer

    def compute() -> Any:
        weight = base.weight
        for name in self.active_adapters:
            if name in self.lora_A:
                weight = weight + self.get_delta_weight(name).to(weight.dtype)
        return fake_quantize_ste(weight, self._qat.group_size, self._qat.symmetric)

    q = _quantized(self, compute)
    return F.linear(x.to(q.dtype), q, base.bias)


def _linear_forward(self: Any, x: Any) -> Any:
    import torch.nn.functional as F

    q = _quantized(self, lambda: fake_quantize_ste(self.weight, self._qat.group_size, self._qat.symmetric))
    return F.linear(x.to(q.dtype), q, self.bias)


def apply_qat(model: Any, qat: QatConfig) -> dict[str, int]:
    """Switch every non-ignored Linear of a PEFT model to the fake-quantized forward; returns counts."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear

    counts = {"lora_layers": 0, "frozen_layers": 0}
    inner = set()
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            inner.add(id(module.base_layer))
    for name, module in model.named_modules():
        clean = name.replace("base_model.model.", "", 1)
        if isinstance(module, LoraLinear):
            if is_ignored(clean, qat.ignore):
                continue
            if module.merged:
                raise ValueError(f"{clean}: adapter already merged; QAT needs an unmerged LoRA model")
            _check_width(clean, module.base_layer.in_features, qat.group_size)
            module._qat = qat
            module.forward = types.MethodType(_lora_forward, module)
            counts["lora_layers"] += 1
        elif isinstance(module, torch.nn.Linear) and id(module) not in inner:
            if is_ignored(clean, qat.ignore) or ".lora_" in name:
                continue
            _check_width(clean, module.in_features, qat.group_size)
            module._qat = qat
            module.forward = types.MethodType(_linear_forward, module)
            counts["frozen_layers"] += 1
    return counts


def _check_width(name: str, width: int, group_size: int) -> None:
    if width % group_size:
        raise ValueError(f"training.qat.group_size {group_size} does not divide {name}'s input width {width}")
