"""Reading INT4 compressed-tensors checkpoints in the serving environment: sizes, dequantized weights.

llm-compressor writes W4A16 checkpoints in compressed-tensors' ``pack-quantized`` format: for each
quantized Linear ``<name>``, ``<name>.weight_packed`` (int32, eight 4-bit values per word along the
input dimension), ``weight_scale`` (one per group of ``group_size`` input channels),
``weight_zero_point`` (asymmetric schemes; packed along the output dimension) and ``weight_shape``.
The error analysis and the tests dequantize them here, with compressed-tensors' own unpacking, so
the numbers describe exactly what vLLM's kernel computes with; nothing here needs llm-compressor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from app.errors import AppError

# Deferred imports: torch, safetensors and compressed_tensors are imported inside the functions that
# use them, for start-up time.

QUANT_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")


class CheckpointError(AppError, ValueError):
    """A checkpoint that is not the INT4 compressed-tensors kind this stage writes and reads."""


@dataclass(frozen=True)
class WeightScheme:
    """What an INT4 checkpoint's weights are: bits, group size, symmetry (from its config.json)."""

    num_bits: int
    group_size: int
    symmetric: bool
    ignore: tuple[str, ...]

    @property
    def name(self) -> str:
        return "W4A16" if self.symmetric else "W4A16_ASYM"


def quantization_config(model_dir: Path) -> dict[str, Any] | None:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return cfg.get("quantization_config")


def weight_scheme(model_dir: Path) -> WeightScheme:
    q = quantization_config(model_dir)
    if not q or q.get("quant_method") != "compressed-tensors":
        raise CheckpointError(f"{model_dir} is not a compressed-tensors checkpoint (no quantization_config)")
    groups = list(q.get("config_groups", {}).values())
    if len(groups) != 1 or not groups[0].get("weights"):
        raise CheckpointError(f"{model_dir}: expected one weight-only config group, got {len(groups)}")
    w = groups[0]["weights"]
    if w.get("strategy") != "group" or w.get("type") != "int":
        raise CheckpointError(f"{model_dir}: expected grouped int weights, got {w.get('strategy')}/{w.get('type')}")
    return WeightScheme(int(w["num_bits"]), int(w["group_size"]), bool(w["symmetric"]), tuple(q.get("ignore", [])))


def _tensors(model_dir: Path) -> Iterator[tuple[str, Any]]:
    from safetensors import safe_open

    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                yield key, st.get_tensor(key)


def dequantize_layer(packed: Any, scale: Any, zero_point: Any | None, shape: Any, num_bits: int,
                     group_size: int) -> Any:
    """The float32 weight a pack-quantized Linear stands for: (q - zero_point) * scale per group."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    out_f, in_f = (int(v) for v in shape.tolist())
    q = unpack_from_int32(packed, num_bits, torch.Size([out_f, in_f])).to(torch.float32)
    groups = in_f // group_size
    q = q.view(out_f, groups, group_size)
    s = scale.to(torch.float32).view(out_f, groups, 1)
    if zero_point is not None:
        zp = unpack_from_int32(zero_point, num_bits, torch.Size([out_f, groups]), packed_dim=0).to(torch.float32)
        q = q - zp.view(out_f, groups, 1)
    return (q * s).view(out_f, in_f)


def dequantized_state_dict(model_dir: Path) -> dict[str, Any]:
    """Every weight of the checkpoint in float32, quantized Linears dequantized (keys as in a plain
    checkpoint: ``<name>.weight``)."""
    import torch

    scheme = weight_scheme(model_dir)
    plain: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {}
    for key, t in _tensors(model_dir):
        prefix, _, leaf = key.rpartition(".")
        if leaf in QUANT_SUFFIXES:
            parts.setdefault(prefix, {})[leaf] = t
        else:
            plain[key] = t.to(torch.float32)
    for name, p in parts.items():
        if "weight_g_idx" in p:
            raise CheckpointError(f"{model_dir}: {name} uses activation reordering (g_idx), not read here")
        plain[f"{name}.weight"] = dequantize_layer(p["weight_packed"], p["weight_scale"], p.get("weight_zero_point"),
                                                   p["weight_shape"], scheme.num_bits, scheme.group_size)
    return plain


def quantized_layers(model_dir: Path) -> list[str]:
    """Names of the Linear layers stored as INT4 (without the ``.weight`` suffix)."""
    return sorted({k.rpartition(".")[0] for k, _ in _tensors(model_dir) if k.endswith(".weight_packed")})


def size_report(model_dir: Path) -> dict[str, Any]:
    """Bytes on disk of the whole checkpoint's weights, and of the quantized layers against what the
    same layers take in bf16 (2 bytes a parameter); works for plain checkpoints too (nothing quantized)."""
    whole = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    quant_bytes = quant_params = other_bytes = 0
    for key, t in _tensors(model_dir):
        nbytes = t.numel() * t.element_size()
        leaf = key.rpartition(".")[2]
        if leaf in QUANT_SUFFIXES:
            quant_bytes += nbytes
            if leaf == "weight_shape":
                quant_params += int(t.prod())
        else:
            other_bytes += nbytes
    return {"safetensors_bytes": whole, "quantized_layer_bytes": quant_bytes,
            "quantized_layer_bf16_bytes": 2 * quant_params, "quantized_parameters": quant_params,
            "unquantized_bytes": other_bytes}


def linear_input_widths(model_dir: Path) -> dict[str, int]:
    """Input width of every Linear of the model in ``model_dir`` (built on the meta device: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {n: m.in_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
