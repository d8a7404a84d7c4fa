"""Where INT4 hurts: error analysis of the quantized variants of one model, and its report.

:func:`analyze` compares every INT4 variant (compressed-tensors ``pack-quantized`` checkpoints, all
quantized from the same bf16 ``source`` model) with that source:

* sizes: whole checkpoint, and the quantized layers against the same layers in bf16;
* per quantized Linear, the weight reconstruction error (relative L2 and cosine of ``Wq`` against ``W``)
  and the output error on held-out inputs: the source model runs on texts the calibration never saw,
  a forward hook on each quantized Linear takes its input ``X`` and accumulates ``||X Wq^T - X W^T||``
  against ``||X W^T||`` layer by layer (no activation is kept);
* from the same hooks, per input channel the largest magnitude over the tokens, and per layer how far
  the largest channel stands out (max / median, max / p99, share above 6x the median): AWQ rescales
  salient input channels before rounding, GPTQ compensates rounding error with second-order statistics
  of the inputs, so where the outliers are tells which method should win; the rank correlation across
  layers between the outlier ratio and GPTQ's minus AWQ's output error says whether it did;
* perplexity on validation examples of the source, every variant (its dequantized weights in the
  source architecture), the base model, and of an INT4 base with the LoRA update unquantized on top;
* with the base model the source was fine-tuned from, how much of the fine-tuning update
  ``delta = W_source - W_base`` each variant keeps (in its own direction), against the noise
  quantization adds.

AWQ checkpoints hold a *smoothed* model: a layer norm's weight divided by per-channel scales ``s`` and
the Linears after it multiplied by ``s`` along their input (likewise ``up_proj`` rows divided by ``s``
and ``down_proj`` inputs multiplied by it). The function is the source's, the weights are not, so each
Linear is compared through its *effective* weight in the source's coordinates: ``Wq`` times the norm
ratio along the input (exact: both norms are stored), and for the ``up_proj -> down_proj`` pair (and
``v_proj -> o_proj`` when their widths match) the scale estimated by least squares from both layers
(the pair's product is exact whatever the scale; only the split of the error between the two layers
rests on the estimate). Perplexity always runs the checkpoint's own weights.

:func:`write_report` writes report.md, report.html (plots inline) and the plots.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from app.errors import AppError
from app.quantize.checkpoint import (
    dequantized_state_dict,
    quantized_layers,
    size_report,
    weight_scheme,
)
from app.tracking import finite

# Deferred imports: torch, transformers, numpy, pandas and matplotlib are imported inside the
# functions that use them, for start-up time: the stage and the CLI import this module.

SEED = 0
TOP_LAYERS = 10  # worst layers kept in the results
REPORT_WORST = 5  # worst layers shown in the report
OUTLIER_FACTOR = 6.0  # a channel is an outlier above this many times the median channel absmax
BATCH_SIZE = 4
SMOOTHED_PAIR_THRESHOLD = math.log(1.05)  # median |log s| above this: the Linear pair was rescaled
PERMUTATIONS = 2000  # for the p-value of the outlier/method correlation

# Llama: which layer norm feeds which Linears, and which Linear feeds which (AWQ's smoothing mappings).
_NORM_OF = {"self_attn.q_proj": "input_layernorm", "self_attn.k_proj": "input_layernorm",
            "self_attn.v_proj": "input_layernorm", "mlp.gate_proj": "post_attention_layernorm",
            "mlp.up_proj": "post_attention_layernorm"}
_LINEAR_PAIRS = (("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj"))
_BLOCK = re.compile(r"^(?P<prefix>.*\.layers\.(?P<index>\d+))\.(?P<kind>.+)$")


class AnalysisError(AppError, ValueError):
    """Inputs the analysis cannot compare: no texts, a variant of another architecture, unexpected keys."""


# -- texts ---------------------------------------------------------------------------------------------


@dataclass
class _Text:
    ids: list[int]
    answer: list[bool] | None  # per token: part of the assistant's answer (None: no answer found)
    truncated: bool


def assistant_header(tokenizer: Any) -> str | None:
    """The text the chat template puts before an assistant answer (its generation prompt, e.g.
    ``<|im_start|>assistant\\n``); None without a template or when it cannot be told apart."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    msgs = [{"role": "user", "content": "x"}]
    try:
        plain = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001  (a template that fails to render: no answer span, all tokens count)
        return None
    if not isinstance(prompt, str) or not prompt.startswith(plain) or len(prompt) == len(plain):
        return None
    return prompt[len(plain):]


def encode_texts(tokenizer: Any, texts: list[str], max_seq_len: int) -> tuple[list[_Text], str | None]:
    """Token ids of already-templated texts (no special tokens added), and per token whether it belongs
    to the last assistant answer (after the last generation prompt in the text, end-of-turn included,
    as the training labels). A text longer than ``max_seq_len`` keeps its last tokens (the answer)."""
    header = assistant_header(tokenizer)
    out = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        answer = None
        at = text.rfind(header) if header else -1
        if at >= 0:
            start = at + len(header)
            answer = [end > start for _, end in offsets]
            if not any(answer):
                answer = None
        truncated = len(ids) > max_seq_len
        if truncated:
            ids = ids[-max_seq_len:]
            answer = answer[-max_seq_len:] if answer else None
        out.append(_Text(ids, answer, truncated))
    return out, header


def _batches(texts: list[_Text], batch_size: int = BATCH_SIZE) -> list[list[_Text]]:
    """Texts in batches of similar length (less padding), longest first, in a fixed order."""
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i].ids), i))
    ordered = [texts[i] for i in order if len(texts[i].ids) >= 1]
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def _padded(batch: list[_Text]) -> tuple[Any, Any]:
    import torch

    width = max(len(t.ids) for t in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, t in enumerate(batch):
        ids[i, :len(t.ids)] = torch.tensor(t.ids, dtype=torch.long)
        mask[i, :len(t.ids)] = True
    return ids, mask


def perplexity(model: Any, texts: list[_Text]) -> dict[str, Any]:
    """Mean next-token negative log-likelihood and perplexity over all tokens of every text and over
    the answer tokens of the texts with an answer span (right-padded batches, padding ignored)."""
    import torch
    import torch.nn.functional as F

    sums = {"all": 0.0, "answer": 0.0}
    counts = {"all": 0, "answer": 0}
    with torch.no_grad():
        for batch in _batches(texts):
            ids, mask = _padded(batch)
            hidden = model.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            for i, t in enumerate(batch):
                n = len(t.ids)
                if n < 2:
                    continue
                # logits of one sequence at a time: a batch of 512 x 49152 float32 logits is 400 MB
                logits = model.lm_head(hidden[i, :n - 1]).float()
                nll = F.cross_entropy(logits, ids[i, 1:n], reduction="none").double()
                sums["all"] += float(nll.sum())
                counts["all"] += n - 1
                if t.answer:
                    keep = torch.tensor(t.answer[1:n], dtype=torch.bool)
                    sums["answer"] += float(nll[keep].sum())
                    counts["answer"] += int(keep.sum())
    out: dict[str, Any] = {}
    for k in ("all", "answer"):
        nll = sums[k] / counts[k] if counts[k] else None
        out[f"nll_{k}"] = nll
        out[f"perplexity_{k}"] = math.exp(nll) if nll is not None else None
        out[f"tokens_{k}"] = counts[k]
    return out


# -- weights -------------------------------------------------------------------------------------------


def _kind(name: str) -> tuple[str | None, str]:
    """(block prefix ``model.layers.3``, kind ``mlp.up_proj``) of a Linear's name; (None, name) outside blocks."""
    m = _BLOCK.match(name)
    return (m["prefix"], m["kind"]) if m else (None, name)


def _ls_scale(target: Any, stored: Any, dim: int) -> Any:
    """Per slice along ``dim``, the factor c minimizing ||c * stored - target|| (1 where stored is 0)."""
    import torch

    num = (target * stored).sum(dim=dim)
    den = (stored * stored).sum(dim=dim)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(den))


def effective_weights(layers: list[str], variant: dict[str, Any],
                      source: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """Each quantized Linear's dequantized weight in the source model's coordinates (see the module
    docstring: undoes AWQ-style smoothing), and how many layers needed it (by kind of smoothing)."""
    import torch

    eff = {name: variant[f"{name}.weight"] for name in layers}
    folded = {"norm": 0, "pair": 0}
    for name in layers:
        prefix, kind = _kind(name)
        if prefix is None or kind not in _NORM_OF:
            continue
        key = f"{prefix}.{_NORM_OF[kind]}.weight"
        if key not in variant or key not in source or torch.equal(variant[key], source[key]):
            continue
        # the variant computes Wq (g_var * x_hat) = (Wq * g_var / g_src) (g_src * x_hat): exact
        ratio = torch.where(source[key] != 0, variant[key] / torch.where(source[key] != 0, source[key], 1.0), 1.0)
        eff[name] = eff[name] * ratio[None, :]
        folded["norm"] += 1
    for first_kind, second_kind in _LINEAR_PAIRS:
        for name in layers:
            prefix, kind = _kind(name)
            if kind != first_kind:
                continue
            second = f"{prefix}.{second_kind}"
            if second not in eff or eff[name].shape[0] != eff[second].shape[1]:
                continue  # GQA: v_proj narrower than o_proj's input, AWQ leaves the pair alone
            # AWQ stores first/s (rows) and second*s (columns); s from both layers by least squares
            s_first = _ls_scale(source[f"{name}.weight"], eff[name], dim=1)  # multiplies the stored rows
            s_second = _ls_scale(eff[second], source[f"{second}.weight"], dim=0)  # stored = s * source column
            s = torch.where((s_first > 0) & (s_second > 0), (s_first.abs() * s_second.abs()).sqrt(),
                            torch.where(s_first > 0, s_first, torch.where(s_second > 0, s_second, 1.0)))
            if float(s.log().abs().median()) <= SMOOTHED_PAIR_THRESHOLD:
                continue  # not rescaled: quantization noise alone moves the estimate by ~1%
            eff[name] = eff[name] * s[:, None]
            eff[second] = eff[second] / s[None, :]
            folded["pair"] += 2
    return eff, folded


def _dot(a: Any, b: Any) -> float:
    import torch

    return float(torch.dot(a.flatten(), b.flatten()))  # float32, pairwise-summed: ~1e-7 relative


def weight_error(wq: Any, w: Any) -> dict[str, float]:
    """Relative L2 (Frobenius) error and cosine similarity of the flattened weights."""
    diff = float((wq - w).norm())
    norm_w, norm_q = float(w.norm()), float(wq.norm())
    return {"rel_l2": diff / norm_w if norm_w else (0.0 if diff == 0 else math.inf),
            "cos": min(1.0, _dot(wq, w) / (norm_w * norm_q)) if norm_w and norm_q else (1.0 if diff == 0 else 0.0),
            "sq_err": diff * diff, "sq_norm": norm_w * norm_w}


def rtn_dequantized(weight: Any, group_size: int, symmetric: bool, num_bits: int = 4) -> Any:
    """:func:`app.int4.fake_quantize`'s codes (computed from the bf16 weight, as the packer does)
    dequantized in float32, as :func:`app.quantize.checkpoint.dequantize_layer` reads a checkpoint:
    fake_quantize returns ``(q - zp) * scale`` rounded to bf16, which would add a rounding noise of
    ~0.2% of the weight to every comparison with a dequantized variant. Rounded to bf16 it equals
    fake_quantize exactly (checked in the tests)."""
    import torch

    from app.int4 import int4_codes

    w = weight.to(torch.bfloat16)
    q, zp, scale = int4_codes(w, group_size, symmetric, num_bits)
    return ((q.float() - zp.float()) * scale.float()).reshape(w.shape)


def survival(wq: Any, w_source: Any, w_base: Any, q_base: Any) -> dict[str, float] | None:
    """How much of the update delta = W_source - W_base a quantized weight keeps (None when delta is 0)."""
    delta = w_source - w_base
    d2 = _dot(delta, delta)
    if d2 == 0:
        return None
    kept = wq - w_base
    kept_norm = float(kept.norm())
    dot = _dot(kept, delta)
    noise = float((kept - delta).norm())  # = ||Wq - W_source||
    residual = float((wq - q_base - delta).norm())
    return {"delta_sq_norm": d2, "noise_to_update": noise / math.sqrt(d2), "survival": dot / d2,
            "survival_cos": dot / (kept_norm * math.sqrt(d2)) if kept_norm else 0.0,
            "rel_residual": residual / math.sqrt(d2), "sq_noise": noise * noise, "sq_residual": residual * residual}


def _aggregate_survival(per_layer: dict[str, dict[str, float] | None]) -> dict[str, Any] | None:
    rows = [r for r in per_layer.values() if r]
    total = sum(r["delta_sq_norm"] for r in rows)
    if not rows or total == 0:
        return None

    def weighted(key: str) -> float:
        return sum(r[key] * r["delta_sq_norm"] for r in rows) / total

    return {"layers": len(rows), "weighting": "||delta||^2",
            "survival": weighted("survival"), "survival_cos": weighted("survival_cos"),
            "noise_to_update": weighted("noise_to_update"), "rel_residual": weighted("rel_residual"),
            "pooled_noise_to_update": math.sqrt(sum(r["sq_noise"] for r in rows) / total),
            "pooled_rel_residual": math.sqrt(sum(r["sq_residual"] for r in rows) / total)}


# -- the hooks -----------------------------------------------------------------------------------------


class _Probe:
    """Forward hooks on the source model's quantized Linears: per input channel the running absmax,
    and per variant the running sums of the output error ``X (Wq - W)^T`` against ``X W^T``."""

    def __init__(self, model: Any, layers: list[str], diffs: dict[str, dict[str, Any]]) -> None:
        self.diffs = diffs
        self.mask: Any = None
        self.absmax: dict[str, Any] = {}
        self.tokens: dict[str, int] = dict.fromkeys(layers, 0)
        self.sums = {v: {name: [0.0, 0.0, 0.0, 0] for name in layers if name in d} for v, d in diffs.items()}
        modules = dict(model.named_modules())
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str) -> Callable[..., None]:
        import torch

        def hook(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0][self.mask].float()  # real tokens only: [N, in]
            y = output[self.mask].float()  # [N, out]
            amax = x.abs().amax(dim=0)
            prev = self.absmax.get(name)
            self.absmax[name] = amax if prev is None else torch.maximum(prev, amax)
            self.tokens[name] += x.shape[0]
            y2 = (y * y).sum(-1)
            for v, diff in self.diffs.items():
                e = diff.get(name)
                if e is None:
                    continue
                d = x @ e.T  # Yq - Y
                d2 = (d * d).sum(-1)
                dy = (d * y).sum(-1)
                q2 = (y2 + 2 * dy + d2).clamp_min(0)
                den = (y2 * q2).sqrt()
                cos = torch.where(den > 0, (y2 + dy) / den.clamp_min(1e-30), (d2 == 0).float())
                acc = self.sums[v][name]
                acc[0] += float(d2.double().sum())
                acc[1] += float(y2.double().sum())
                acc[2] += float(cos.double().sum())
                acc[3] += int(x.shape[0])

        return hook

    def run(self, model: Any, texts: list[_Text]) -> None:
        import torch

        with torch.no_grad():
            for batch in _batches(texts):
                ids, self.mask = _padded(batch)
                model.model(input_ids=ids, attention_mask=self.mask.long())

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def output_errors(self, variant: str) -> dict[str, dict[str, float]]:
        return {name: {"rel_l2": math.sqrt(d2 / y2) if y2 else (0.0 if d2 == 0 else math.inf),
                       "cos": cos / n if n else math.nan, "sq_err": d2, "sq_norm": y2}
                for name, (d2, y2, cos, n) in self.sums[variant].items()}

    def outliers(self) -> dict[str, dict[str, Any]]:
        import torch

        out = {}
        for name, a in self.absmax.items():
            a = a.double()
            med = float(a.median())
            p99 = float(torch.quantile(a, 0.99))
            mx = float(a.max())
            top = torch.argsort(a, descending=True)[:5]
            out[name] = {"channels": int(a.numel()), "tokens": self.tokens[name], "max_absmax": mx,
                         "median_absmax": med, "p99_absmax": p99,
                         "max_over_median": mx / med if med else math.inf,
                         "max_over_p99": mx / p99 if p99 else math.inf,
                         "share_above_6x_median": float((a > OUTLIER_FACTOR * med).double().mean()),
                         "top_channels": [int(i) for i in top]}
        return out


# -- statistics ----------------------------------------------------------------------------------------


def _ranks(x: Any) -> Any:
    """Ranks with ties averaged (1-based)."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def _pearson(a: Any, b: Any) -> float | None:
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den else None


def correlation(x: list[float], y: list[float], seed: int = SEED) -> dict[str, Any]:
    """Spearman and Pearson correlation, with a two-sided permutation p-value for Spearman's rho."""
    import numpy as np

    rx, ry = _ranks(x), _ranks(y)
    rho = _pearson(rx, ry)
    p = None
    if rho is not None:
        rng = np.random.default_rng(seed)
        hits = sum(abs(_pearson(rx, rng.permutation(ry)) or 0.0) >= abs(rho) - 1e-12 for _ in range(PERMUTATIONS))
        p = (hits + 1) / (PERMUTATIONS + 1)
    return {"n": len(x), "spearman": rho, "pearson": _pearson(x, y), "p_permutation": p}


def _interpret_kinds(by_kind: dict[str, Any]) -> str:
    rhos = sorted((r["spearman"], k) for k, r in by_kind.items() if r["spearman"] is not None)
    if not rhos:
        return ""
    median = rhos[len(rhos) // 2][0] if len(rhos) % 2 else (rhos[len(rhos) // 2 - 1][0] + rhos[len(rhos) // 2][0]) / 2
    sign = sum(r > 0 for r, _ in rhos), sum(r < 0 for r, _ in rhos)
    return (f" Within one kind of layer (kinds differ in both measures): rho from {rhos[0][0]:+.2f} ({rhos[0][1]}) to "
            f"{rhos[-1][0]:+.2f} ({rhos[-1][1]}), median {median:+.2f}, positive in {sign[0]} and negative in "
            f"{sign[1]} "
            f"of {len(rhos)} kinds.")


def _interpret(awq: str, gptq: str, c: dict[str, Any], diffs: list[float]) -> str:
    n, rho, p = c["n"], c["spearman"], c["p_permutation"]
    awq_better = sum(d > 0 for d in diffs)
    mean = sum(diffs) / n if n else 0.0
    tally = (f"{awq} has the lower output error on {awq_better} of {n} layers "
             f"(mean {gptq} minus {awq}: {mean:+.4f}).")
    if rho is None:
        return f"No correlation: the outlier ratio or the error difference is constant across layers. {tally}"
    strength = ("no clear" if abs(rho) < 0.1 else "a weak" if abs(rho) < 0.3 else "a moderate" if abs(rho) < 0.5
                else "a strong")
    if abs(rho) < 0.1:
        what = "which method does better does not follow the layer's activation outliers"
    elif rho > 0:
        what = (f"the layers whose inputs have more pronounced outlier channels are those where {awq} gains "
                f"on {gptq}")
    else:
        what = (f"the layers whose inputs have more pronounced outlier channels are those where {gptq} gains "
                f"on {awq}")
    return (f"Spearman rho {rho:+.2f} across {n} layers (permutation p={p:.3g}) between the input outlier ratio "
            f"(max/median channel absmax) and {gptq} minus {awq} output error: {strength} relation, {what}. {tally}")


# -- the analysis --------------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _check_keys(name: str, sd: dict[str, Any], model_sd: dict[str, Any], tied: bool) -> None:
    missing = set(model_sd) - set(sd)
    unexpected = set(sd) - set(model_sd)
    allowed = {"lm_head.weight"} if tied else set()
    if unexpected or missing - allowed:
        raise AnalysisError(f"variant {name}: weights do not match the source architecture "
                            f"(missing {sorted(missing - allowed)[:5]}, unexpected {sorted(unexpected)[:5]})")
    bad = [k for k in sd if tuple(sd[k].shape) != tuple(model_sd[k].shape)]
    if bad:
        raise AnalysisError(f"variant {name}: shapes differ from the source for {bad[:5]}")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _summary(per_layer: dict[str, dict[str, float]]) -> dict[str, Any]:
    rows = list(per_layer.values())
    sq_err, sq_norm = sum(r["sq_err"] for r in rows), sum(r["sq_norm"] for r in rows)
    return {"mean_rel_l2": _mean([r["rel_l2"] for r in rows]), "mean_cos": _mean([r["cos"] for r in rows]),
            "pooled_rel_l2": math.sqrt(sq_err / sq_norm) if sq_norm else None,
            "max_rel_l2": max((r["rel_l2"] for r in rows), default=None)}


def _worst(per_layer: dict[str, dict[str, float]], k: int = TOP_LAYERS) -> list[dict[str, Any]]:
    ranked = sorted(per_layer.items(), key=lambda kv: (-kv[1]["rel_l2"], kv[0]))[:k]
    return [{"layer": name, "rel_l2": r["rel_l2"], "cos": r["cos"]} for name, r in ranked]


def _strip(per_layer: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {n: {k: v for k, v in r.items() if k in ("rel_l2", "cos")} for n, r in per_layer.items()}


def analyze(source_dir: Path, variants: dict[str, Path], *, base_dir: Path | None,
            heldout_texts: list[str], validation_texts: list[str],
            progress: Callable[[str], None] = print, max_seq_len: int = 512) -> dict[str, Any]:
    """The error analysis of ``variants`` (name -> INT4 checkpoint quantized from ``source_dir``);
    JSON-serializable. ``heldout_texts`` (chat-formatted, not used in calibration) feed the per-layer
    output error and activation statistics, ``validation_texts`` (prompt + answer) the perplexities;
    with ``base_dir`` (the model ``source_dir`` was fine-tuned from) also how much of the fine-tuning
    update survives INT4. See the module docstring."""
    import torch
    from transformers import AutoTokenizer

    if not variants:
        raise AnalysisError("no variants to analyze")
    if not heldout_texts:
        raise AnalysisError("no held-out texts: the output error and activation statistics need some")
    if not validation_texts:
        raise AnalysisError("no validation texts: perplexity needs some")
    torch.manual_seed(SEED)
    clock = time.monotonic()

    def step(msg: str) -> None:
        progress(f"[analysis {time.monotonic() - clock:6.1f}s] {msg}")

    source_dir, base_dir = Path(source_dir), Path(base_dir) if base_dir else None
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    heldout, _ = encode_texts(tokenizer, heldout_texts, max_seq_len)
    validation, header = encode_texts(tokenizer, validation_texts, max_seq_len)
    with_answer = sum(t.answer is not None for t in validation)
    ppl_mode = "answer" if with_answer == len(validation) else "all"

    step(f"loading the source model {source_dir}")
    model = _load(source_dir)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    model_sd = model.state_dict()
    source_sd = {k: v.detach().clone() for k, v in model_sd.items()}
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]

    schemes = {name: weight_scheme(Path(path)) for name, path in variants.items()}
    layer_sets = {name: quantized_layers(Path(path)) for name, path in variants.items()}
    for name, stored in layer_sets.items():
        unknown = [n for n in stored if n not in linears]
        if unknown:
            raise AnalysisError(f"variant {name}: quantized layers the source has no Linear for: {unknown[:5]}")
    union = set().union(*layer_sets.values())
    layers = [n for n in linears if n in union]  # model order
    W = {n: source_sd[f"{n}.weight"] for n in layers}

    sizes: dict[str, Any] = {"source": size_report(source_dir)}
    for name, path in variants.items():
        rep = size_report(Path(path))
        src = sizes["source"]["safetensors_bytes"]
        rep["reduction_whole"] = 1 - rep["safetensors_bytes"] / src if src else None
        bf16 = rep["quantized_layer_bf16_bytes"]
        rep["reduction_quantized_layers"] = 1 - rep["quantized_layer_bytes"] / bf16 if bf16 else None
        sizes[name] = rep

    ppl: dict[str, Any] = {}
    step(f"perplexity of the source on {len(validation)} validation texts")
    ppl["source"] = perplexity(model, validation)

    base_w: dict[str, Any] | None = None
    if base_dir is not None:
        step(f"loading the base model {base_dir}")
        base = _load(base_dir)
        base_sd = base.state_dict()
        for n in layers:
            key = f"{n}.weight"
            if key not in base_sd or base_sd[key].shape != W[n].shape:
                raise AnalysisError(f"base model {base_dir} has no Linear {n} of the source's shape")
        step("perplexity of the base model")
        ppl["base"] = perplexity(base, validation)
        base_w = {n: base_sd[f"{n}.weight"].detach().clone() for n in layers}
        del base, base_sd

    diffs: dict[str, dict[str, Any]] = {}  # variant -> layer -> Wq_eff - W (for the hooks)
    results_v: dict[str, Any] = {}
    lora_layers: dict[str, dict[str, Any]] = {}
    q_base: dict[tuple[int, bool, int], dict[str, Any]] = {}  # RTN of the base per scheme

    def rtn_base(scheme: Any, names: list[str]) -> dict[str, Any]:
        key = (scheme.group_size, scheme.symmetric, scheme.num_bits)
        cache = q_base.setdefault(key, {})
        for n in names:
            if n not in cache:
                cache[n] = rtn_dequantized(base_w[n], scheme.group_size, scheme.symmetric, scheme.num_bits)
        return cache

    for name, path in variants.items():
        step(f"variant {name}: dequantizing {path}")
        sd = dequantized_state_dict(Path(path))
        _check_keys(name, sd, model_sd, tied)
        vl = [n for n in layers if n in layer_sets[name]]
        eff, folded = effective_weights(vl, sd, source_sd)
        werr = {n: weight_error(eff[n], W[n]) for n in vl}
        diffs[name] = {n: eff[n] - W[n] for n in vl}
        entry: dict[str, Any] = {"path": str(path), "scheme": {"name": schemes[name].name,
                                                                "num_bits": schemes[name].num_bits,
                                                                "group_size": schemes[name].group_size,
                                                                "symmetric": schemes[name].symmetric,
                                                                "ignore": list(schemes[name].ignore)},
                                 "quantized_layers": len(vl),
                                 "smoothing_folded": {"norm_scaled_layers": folded["norm"],
                                                      "rescaled_pair_layers": folded["pair"]},
                                 "weight_error": werr}
        if base_w is not None:
            qb = rtn_base(schemes[name], vl)
            lora_layers[name] = {n: survival(eff[n], W[n], base_w[n], qb[n]) for n in vl}
        del eff
        step(f"variant {name}: perplexity")
        model.load_state_dict(sd, strict=False)
        ppl[name] = perplexity(model, validation)
        model.load_state_dict(source_sd)
        del sd
        results_v[name] = entry

    plus_lora: dict[str, Any] = {}
    if base_w is not None:
        by_scheme: dict[tuple[int, bool, int], list[str]] = {}
        for name in variants:
            s = schemes[name]
            by_scheme.setdefault((s.group_size, s.symmetric, s.num_bits), []).append(name)
        for key, names in by_scheme.items():
            s = schemes[names[0]]
            label = "int4-base+lora (rtn)" if len(by_scheme) == 1 else f"int4-base+lora (rtn, {s.name} g{s.group_size})"
            vl = [n for n in layers if n in layer_sets[names[0]]]
            qb = rtn_base(s, vl)
            weights = {n: qb[n] + (W[n] - base_w[n]) for n in vl}
            diffs[label] = {n: weights[n] - W[n] for n in vl}
            step(f"{label}: perplexity")
            model.load_state_dict({**source_sd, **{f"{n}.weight": w for n, w in weights.items()}})
            ppl[label] = perplexity(model, validation)
            model.load_state_dict(source_sd)
            plus_lora[label] = {"scheme": s.name, "group_size": s.group_size, "like_variants": names,
                                "weight_error": {n: weight_error(weights[n], W[n]) for n in vl}}
            del weights

    tokens = sum(len(t.ids) for t in heldout)
    step(f"output error and activation statistics on {len(heldout)} held-out texts ({tokens} tokens)")
    probe = _Probe(model, layers, diffs)
    try:
        probe.run(model, heldout)
    finally:
        probe.close()
    outliers = probe.outliers()

    for name, entry in results_v.items():
        oerr = probe.output_errors(name)
        werr = entry.pop("weight_error")
        entry["weight_error"] = {**_summary(werr), "worst": _worst(werr), "per_layer": _strip(werr)}
        entry["output_error"] = {**_summary(oerr), "worst": _worst(oerr), "per_layer": _strip(oerr)}
        entry["perplexity"] = ppl[name]
    for label, entry in plus_lora.items():
        oerr = probe.output_errors(label)
        werr = entry.pop("weight_error")
        entry["weight_error"] = {**_summary(werr), "per_layer": _strip(werr)}
        entry["output_error"] = {**_summary(oerr), "per_layer": _strip(oerr)}
        entry["perplexity"] = ppl[label]

    comparisons = []
    awqs = [v for v in variants if "awq" in v.lower()]
    gptqs = [v for v in variants if "gptq" in v.lower()]
    for a in awqs:
        for g in gptqs:
            ea, eg = results_v[a]["output_error"]["per_layer"], results_v[g]["output_error"]["per_layer"]
            common = [n for n in layers if n in ea and n in eg and math.isfinite(outliers[n]["max_over_median"])
                      and math.isfinite(ea[n]["rel_l2"]) and math.isfinite(eg[n]["rel_l2"])]
            x = [outliers[n]["max_over_median"] for n in common]
            d = [eg[n]["rel_l2"] - ea[n]["rel_l2"] for n in common]
            c = correlation(x, d) if len(common) >= 3 else {"n": len(common), "spearman": None, "pearson": None,
                                                              "p_permutation": None}
            by_kind: dict[str, Any] = {}
            for kind in sorted({_kind(n)[1] for n in common}):
                idx = [i for i, n in enumerate(common) if _kind(n)[1] == kind]
                if len(idx) >= 3:  # within one kind of layer: the kinds differ in both measures
                    by_kind[kind] = {"n": len(idx), "spearman": _pearson(_ranks([x[i] for i in idx]),
                                                                         _ranks([d[i] for i in idx])),
                                     "awq_better_layers": sum(d[i] > 0 for i in idx)}
            comparisons.append({"awq": a, "gptq": g, "outlier_measure": "max_over_median",
                                "difference": "gptq output rel_l2 - awq output rel_l2", **c,
                                "awq_better_layers": sum(v > 0 for v in d), "by_kind": by_kind,
                                "interpretation": _interpret(a, g, c, d) + _interpret_kinds(by_kind)})

    lora: dict[str, Any] | None = None
    if base_w is not None:
        delta_norm = {n: float((W[n] - base_w[n]).norm()) for n in layers}
        lora = {"delta_norm": delta_norm,
                "rel_update": {n: delta_norm[n] / float(W[n].norm()) if float(W[n].norm()) else None for n in layers},
                "per_layer": {v: {n: ({k: r[k] for k in ("noise_to_update", "survival", "survival_cos",
                                                         "rel_residual")} if r else None)
                                  for n, r in per.items()} for v, per in lora_layers.items()},
                "aggregate": {v: _aggregate_survival(per) for v, per in lora_layers.items()},
                "int4_base_plus_lora": plus_lora,
                "note": ("survival = <Wq - W_base, delta> / ||delta||^2; rel_residual = ||(Wq - Q(W_base)) - delta||"
                         " / ||delta|| with Q round-to-nearest of the base (fake_quantize's codes of the bf16 "
                         "weight in the variant's scheme, dequantized in float32 like the variants); aggregates "
                         "weighted by ||delta||^2 over the layers with a non-zero update")}
        if all(a is None for a in lora["aggregate"].values()):
            lora["note"] += "; the source equals the base on every quantized layer: no update to survive"

    src = ppl["source"][f"perplexity_{ppl_mode}"]
    for p in ppl.values():
        val = p[f"perplexity_{ppl_mode}"]
        p["perplexity"] = val
        p["change_vs_source"] = (val / src - 1) if src and val is not None else None
    if ppl_mode == "answer":
        definition = ("next-token perplexity over the assistant answer tokens (after the last generation prompt of "
                      "each text, end-of-turn included)")
    elif header:
        definition = (f"next-token perplexity over all tokens of each text (the answer span was found in "
                      f"{with_answer} of {len(validation)} texts only)")
    else:
        definition = "next-token perplexity over all tokens of each text (no chat template to find answers by)"
    step("done")
    return finite({
        "source": str(source_dir), "base": str(base_dir) if base_dir else None,
        "settings": {"seed": SEED, "max_seq_len": max_seq_len, "compute_dtype": "float32",
                     "heldout_texts": len(heldout), "heldout_tokens": tokens,
                     "heldout_truncated": sum(t.truncated for t in heldout),
                     "validation_texts": len(validation), "validation_tokens": sum(len(t.ids) for t in validation),
                     "validation_truncated": sum(t.truncated for t in validation),
                     "outlier_factor": OUTLIER_FACTOR},
        "layers": [{"index": i, "name": n, "block": (int(_BLOCK.match(n)["index"]) if _BLOCK.match(n) else None),
                    "kind": _kind(n)[1]} for i, n in enumerate(layers)],
        "sizes": sizes,
        "variants": results_v,
        "activations": outliers,
        "outlier_correlation": comparisons,
        "perplexity": {"tokens": ppl_mode, "answer_header": header, "texts_with_answer": with_answer,
                       "definition": definition,
                       "models": ppl},
        "lora": lora,
    })


# -- the report ----------------------------------------------------------------------------------------


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.1%}" if signed else f"{x:.1%}"


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _label(name: str) -> str:
    return name.replace("$", r"\$")  # matplotlib reads $...$ as mathtext


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _block_ticks(ax: Any, results: dict[str, Any]) -> None:
    starts = {}
    for layer in results["layers"]:
        if layer["block"] is not None:
            starts.setdefault(layer["block"], layer["index"])
    if starts:
        step = max(1, len(starts) // 10)
        blocks = sorted(starts)[::step]
        ax.set_xticks([starts[b] for b in blocks], [str(b) for b in blocks])
        ax.set_xlabel("quantized Linear, in model order (ticks: first Linear of decoder layer N)")
        for b in starts.values():
            ax.axvline(b, color="#eee", lw=0.5, zorder=0)


def plot_output_error(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    index = {layer["name"]: layer["index"] for layer in results["layers"]}
    fig, ax = plt.subplots(figsize=(11, 4))
    series = [(v, e["output_error"]["per_layer"], "-") for v, e in results["variants"].items()]
    series += [(v, e["output_error"]["per_layer"], "--")
               for v, e in ((results.get("lora") or {}).get("int4_base_plus_lora") or {}).items()]
    for name, per, style in series:
        xs = sorted(index[n] for n in per)
        names = {index[n]: n for n in per}
        ax.plot(xs, [per[names[x]]["rel_l2"] for x in xs], style, lw=1, marker=".", ms=3, label=_label(name))
    ax.set_yscale("log")
    ax.set_ylabel("output relative L2 error")
    ax.set_title("Per-layer output error on held-out inputs")
    _block_ticks(ax, results)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_outliers(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    acts = results["activations"]
    xs = [layer["index"] for layer in results["layers"] if layer["name"] in acts]
    names = [layer["name"] for layer in results["layers"] if layer["name"] in acts]
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(xs, [acts[n]["max_over_median"] for n in names], ".-", lw=1, ms=3, label="max / median channel absmax")
    ax.plot(xs, [acts[n]["max_over_p99"] for n in names], ".-", lw=1, ms=3, label="max / p99 channel absmax")
    ax.axhline(OUTLIER_FACTOR, color="grey", ls=":", lw=1, label=f"{OUTLIER_FACTOR:g}x")
    ax.set_yscale("log")
    ax.set_ylabel("ratio")
    ax.set_title("Input activation outliers per quantized Linear (source model, held-out texts)")
    _block_ticks(ax, results)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sizes(results: dict[str, Any], path: Path) -> None:
    import numpy as np

    plt = _plt()
    sizes = results["sizes"]
    names = ["source", *results["variants"]]
    whole = [sizes[n]["safetensors_bytes"] / 1e6 for n in names]
    bf16 = max((sizes[n]["quantized_layer_bf16_bytes"] for n in names[1:]), default=0)
    qlayers = [bf16 / 1e6] + [sizes[n]["quantized_layer_bytes"] / 1e6 for n in names[1:]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names) + 2), 4))
    ax.bar(x - 0.2, whole, 0.4, label="whole checkpoint")
    ax.bar(x + 0.2, qlayers, 0.4, label="quantized layers (source: same layers in bf16)")
    for xi, w, q in zip(x, whole, qlayers):
        ax.text(xi - 0.2, w, f"{w:.0f}", ha="center", va="bottom", fontsize=7)
        ax.text(xi + 0.2, q, f"{q:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [_label(n) for n in names], rotation=15, fontsize=8)
    ax.set_ylabel("MB")
    ax.set_title("Checkpoint sizes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_survival(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    lora = results["lora"]
    index = {layer["name"]: layer["index"] for layer in results["layers"]}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    for v, per in lora["per_layer"].items():
        pts = sorted((index[n], r) for n, r in per.items() if r)
        ax1.plot([p[0] for p in pts], [p[1]["survival"] for p in pts], ".-", lw=1, ms=3, label=_label(v))
        ax2.plot([p[0] for p in pts], [p[1]["noise_to_update"] for p in pts], ".-", lw=1, ms=3, label=_label(v))
    ax1.axhline(1, color="grey", ls=":", lw=1)
    ax1.set_ylabel("update survival")
    ax1.set_title("LoRA update after INT4: share kept in its own direction (1 = all), and noise against it")
    ax2.set_ylabel("||Wq - W_source|| / ||delta||")
    ax2.set_yscale("log")
    _block_ticks(ax2, results)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _verdicts(results: dict[str, Any], accuracy: dict[str, Any]) -> list[str]:
    """One line per variant: is the sprint target (size and relative accuracy drop) met, from the numbers."""
    target = {"size_reduction": 0.40, "max_relative_drop": 0.02, **(accuracy.get("target") or {})}
    need_size, max_drop = float(target["size_reduction"]), float(target["max_relative_drop"])
    lines = []
    for v, a in accuracy["variants"].items():
        size = results["sizes"].get(v, {}).get("reduction_whole")
        if size is None:
            continue  # a variant without a size report: no verdict
        rel = a.get("relative_drop")
        ref = a["accuracy"] + a["drop"] if a.get("drop") is not None else None
        rel_ci = a.get("relative_ci")
        if rel_ci is None and a.get("ci") is not None and ref:
            rel_ci = [a["ci"][0] / ref, a["ci"][1] / ref]
        size_ok = size >= need_size
        size_part = f"size {size:.1%} smaller ({'meets' if size_ok else 'misses'} the {need_size:.0%} minimum)"
        if rel is None:
            acc_state, acc_part = "unknown", "no relative accuracy drop given"
        elif rel_ci is not None:
            lo, hi = rel_ci
            acc_state = "met" if hi < max_drop else "not met" if lo >= max_drop else "undecided"
            acc_part = (f"relative accuracy drop {rel:+.2%}, CI [{lo:+.2%}, {hi:+.2%}] "
                        + {"met": f"entirely below {max_drop:.0%}", "not met": f"entirely at or above {max_drop:.0%}",
                           "undecided": f"spans {max_drop:.0%}"}[acc_state])
        else:
            acc_state = "met" if rel < max_drop else "not met"
            acc_part = (f"relative accuracy drop {rel:+.2%} ({'below' if rel < max_drop else 'at or above'} "
                        f"{max_drop:.0%}, no interval given)")
        # As the acceptance table judges it: the target is on the point estimate; the interval says
        # whether this many questions establish it.
        if not size_ok:
            verdict = "NOT MET (size)" if acc_state != "not met" else "NOT MET (size and accuracy)"
        elif acc_state == "met":
            verdict = "MET"
        elif acc_state == "not met":
            verdict = "NOT MET (accuracy)"
        elif acc_state == "undecided":
            verdict = (f"MET on the point estimate, not established (the interval reaches {max_drop:.0%})"
                       if rel < max_drop else
                       f"NOT MET on the point estimate (the interval reaches below {max_drop:.0%}: not ruled out)")
        else:
            verdict = "NOT DECIDABLE"
        n = f", n={a['n']}" if a.get("n") is not None else ""
        lines.append(f"{v}: {size_part}; {acc_part}{n}; sprint target {verdict}.")
    return lines


def report_tables(results: dict[str, Any], accuracy: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """(title, DataFrame) for every table of the report, in order."""
    import pandas as pd

    sizes, variants = results["sizes"], results["variants"]
    src = sizes["source"]
    rows = [{"model": "source", "scheme": "bf16 (as stored)", "checkpoint": _mb(src["safetensors_bytes"]),
             "checkpoint reduction": "-", "quantized layers": "-", "same layers in bf16": "-",
             "quantized-layer reduction": "-"}]
    for v, e in variants.items():
        s = sizes[v]
        rows.append({"model": v, "scheme": f"{e['scheme']['name']} g{e['scheme']['group_size']}",
                     "checkpoint": _mb(s["safetensors_bytes"]), "checkpoint reduction": _pct(s["reduction_whole"]),
                     "quantized layers": _mb(s["quantized_layer_bytes"]),
                     "same layers in bf16": _mb(s["quantized_layer_bf16_bytes"]),
                     "quantized-layer reduction": _pct(s["reduction_quantized_layers"])})
    out = [("Sizes", pd.DataFrame(rows))]

    ppl = results["perplexity"]
    out.append(("Perplexity", pd.DataFrame([
        {"model": m, f"perplexity ({ppl['tokens']} tokens)": _f(p["perplexity"], ".3f"),
         "change vs source": _pct(p["change_vs_source"], signed=True),
         "perplexity (all tokens)": _f(p["perplexity_all"], ".3f"), "scored tokens": p[f"tokens_{ppl['tokens']}"]}
        for m, p in ppl["models"].items()])))

    rows = []
    for v, e in variants.items():
        we, oe, sm = e["weight_error"], e["output_error"], e["smoothing_folded"]
        rows.append({"variant": v, "layers": e["quantized_layers"], "weight rel L2 (mean)": _f(we["mean_rel_l2"]),
                     "weight cos (mean)": _f(we["mean_cos"], ".5f"), "output rel L2 (mean)": _f(oe["mean_rel_l2"]),
                     "output rel L2 (pooled)": _f(oe["pooled_rel_l2"]), "output cos (mean)": _f(oe["mean_cos"], ".5f"),
                     "smoothing folded back": (f"{sm['norm_scaled_layers']} norm-scaled, "
                                               f"{sm['rescaled_pair_layers']} pair-rescaled layers")
                     if sm["norm_scaled_layers"] or sm["rescaled_pair_layers"] else "none"})
    for label, e in ((results.get("lora") or {}).get("int4_base_plus_lora") or {}).items():
        rows.append({"variant": label, "layers": len(e["weight_error"]["per_layer"]),
                     "weight rel L2 (mean)": _f(e["weight_error"]["mean_rel_l2"]),
                     "weight cos (mean)": _f(e["weight_error"]["mean_cos"], ".5f"),
                     "output rel L2 (mean)": _f(e["output_error"]["mean_rel_l2"]),
                     "output rel L2 (pooled)": _f(e["output_error"]["pooled_rel_l2"]),
                     "output cos (mean)": _f(e["output_error"]["mean_cos"], ".5f"), "smoothing folded back": "-"})
    out.append(("Reconstruction error (against the source)", pd.DataFrame(rows)))

    acts = results["activations"]
    rows = []
    for v, e in variants.items():
        for rank, w in enumerate(e["output_error"]["worst"][:REPORT_WORST], 1):
            rows.append({"variant": v, "rank": rank, "layer": w["layer"], "output rel L2": _f(w["rel_l2"]),
                         "weight rel L2": _f(e["weight_error"]["per_layer"][w["layer"]]["rel_l2"]),
                         "input outlier ratio (max/median)": _f(acts.get(w["layer"], {}).get("max_over_median"),
                                                                 ".1f")})
    out.append((f"Worst {REPORT_WORST} layers by output error", pd.DataFrame(rows)))

    ranked = sorted(acts.items(), key=lambda kv: -(kv[1]["max_over_median"] or math.inf))[:TOP_LAYERS]
    out.append((f"Strongest input outliers ({len(ranked)} layers)", pd.DataFrame([
        {"layer": n, "max/median": _f(a["max_over_median"], ".1f"), "max/p99": _f(a["max_over_p99"], ".2f"),
         f"share > {OUTLIER_FACTOR:g}x median": _pct(a["share_above_6x_median"]),
         "top channels": ", ".join(map(str, a["top_channels"]))} for n, a in ranked])))

    lora = results.get("lora")
    if lora:
        rows = []
        for v, agg in lora["aggregate"].items():
            rows.append({"variant": v, "layers": agg["layers"] if agg else 0,
                         "survival": _f(agg and agg["survival"], ".3f"),
                         "survival cos": _f(agg and agg["survival_cos"], ".3f"),
                         "noise / update": _f(agg and agg["noise_to_update"], ".3f"),
                         "noise / update (pooled)": _f(agg and agg["pooled_noise_to_update"], ".3f"),
                         "rel. residual vs RTN(base)": _f(agg and agg["rel_residual"], ".3f")})
        out.append(("LoRA update survival (weighted by ||delta||^2)", pd.DataFrame(rows)))
        pm = results["perplexity"]["models"]
        out.append(("INT4 base + unquantized LoRA update", pd.DataFrame([
            {"model": label, "weight rel L2 vs source (pooled)": _f(e["weight_error"]["pooled_rel_l2"]),
             "output rel L2 (pooled)": _f(e["output_error"]["pooled_rel_l2"]),
             "perplexity": _f(pm[label]["perplexity"], ".3f"),
             "change vs source": _pct(pm[label]["change_vs_source"], True)}
            for label, e in lora["int4_base_plus_lora"].items()])))

    if accuracy:
        metric = accuracy.get("primary_metric", "accuracy")
        rows = [{"model": accuracy["source"], str(metric): _f(accuracy["source_accuracy"], ".3f"), "drop": "-",
                 "relative drop": "-", "CI of the drop": "-", "CI of the relative drop": "-", "p": "-",
                 "detectable drop": "-", "n": "-"}]
        for v, a in accuracy["variants"].items():
            ci, rci = a.get("ci"), a.get("relative_ci")
            rows.append({"model": v, str(metric): _f(a.get("accuracy"), ".3f"), "drop": _f(a.get("drop"), "+.3f"),
                         "relative drop": _pct(a.get("relative_drop"), True),
                         "CI of the drop": f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "-",
                         "CI of the relative drop": f"[{rci[0]:+.1%}, {rci[1]:+.1%}]" if rci else "-",
                         "p": _f(a.get("p_value"), ".3g"), "detectable drop": _f(a.get("detectable_drop"), ".3f"),
                         "n": a.get("n", "-")})
        out.append((f"Accuracy ({metric})", pd.DataFrame(rows)))
    return out


def _intro(results: dict[str, Any], accuracy: dict[str, Any] | None) -> list[str]:
    st, ppl = results["settings"], results["perplexity"]
    lines = [f"Source: {results['source']}" + (f"; base: {results['base']}" if results["base"] else ""),
             (f"Output error and activation statistics: {st['heldout_texts']} held-out texts "
              f"({st['heldout_tokens']} tokens, none used in calibration), inputs of each quantized Linear in the "
              f"source model, {st['compute_dtype']}."),
             (f"Perplexity: {ppl['definition']}; {st['validation_texts']} validation texts, at most "
              f"{st['max_seq_len']} tokens each (longer ones keep their end)."),
             ("Weight and output errors compare each variant's effective weight in the source's coordinates "
              "(AWQ smoothing folded back) with the source weight.")]
    for c in results["outlier_correlation"]:
        lines.append(c["interpretation"])
    lora = results.get("lora")
    if lora:
        for v, agg in lora["aggregate"].items():
            if agg:
                lines.append(f"{v} keeps {agg['survival']:.1%} of the fine-tuning update in its direction "
                             f"(cosine {agg['survival_cos']:.3f}); its quantization noise is "
                             f"{agg['noise_to_update']:.2f}x the update's norm (weighted by ||delta||^2).")
        if all(a is None for a in lora["aggregate"].values()):
            lines.append("The source equals the base on the quantized layers: there is no update to survive.")
    if accuracy:
        target = {"size_reduction": 0.40, "max_relative_drop": 0.02, **(accuracy.get("target") or {})}
        lines.append(f"Sprint target: checkpoint at least {float(target['size_reduction']):.0%} smaller and relative "
                     f"accuracy drop below {float(target['max_relative_drop']):.0%} (interval of the relative drop: "
                     "the drop's interval divided by the source's accuracy).")
        if accuracy.get("test_set"):
            lines.append(f"Accuracy: {accuracy.get('primary_metric', 'accuracy')} of the source and every variant on "
                         f"the same questions ({accuracy['test_set']}), paired {accuracy.get('confidence', 0.95):.0%} "
                         "bootstrap intervals and permutation p-values; detectable drop: the smallest difference "
                         "this many questions would show at 80% power.")
        lines += _verdicts(results, accuracy)
    return lines


def _md_cell(value: Any) -> str:
    return escape(str(value), quote=False)  # Markdown renders raw HTML: a name must not become a tag


def write_report(results: dict[str, Any], out_dir: Path, *, accuracy: dict[str, Any] | None = None,
                 title: str = "INT4 quantization report") -> list[Path]:
    """report.md, report.html (self-contained: plots inline as PNG data) and the PNG plots under
    ``out_dir``; returns the paths written. ``accuracy``: per variant ``{"accuracy", "drop",
    "relative_drop", "ci" (interval of the drop), "p_value", "n"}``, optionally ``relative_ci``,
    ``primary_metric`` and ``target`` (``size_reduction``, ``max_relative_drop``)."""
    from app.eval.report import _markdown_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {"output_error": out / "output_error.png", "outliers": out / "activation_outliers.png",
             "sizes": out / "sizes.png"}
    plot_output_error(results, plots["output_error"])
    plot_outliers(results, plots["outliers"])
    plot_sizes(results, plots["sizes"])
    if results.get("lora") and any(results["lora"]["aggregate"].values()):
        plots["survival"] = out / "lora_survival.png"
        plot_survival(results, plots["survival"])
    sections = report_tables(results, accuracy)
    figures = {"Sizes": ["sizes"], "Reconstruction error (against the source)": ["output_error"],
               "LoRA update survival (weighted by ||delta||^2)": ["survival"],
               **{t: ["outliers"] for t, _ in sections if t.startswith("Strongest input outliers")}}
    intro = _intro(results, accuracy)

    md = [f"# {_md_cell(title)}\n", *[f"- {_md_cell(line)}" for line in intro], ""]
    for name, df in sections:
        md += [f"## {_md_cell(name)}\n",
               _markdown_table(df.map(_md_cell).rename(columns=_md_cell) if not df.empty else df)]
        md += [f"![{key}]({plots[key].name})\n" for key in figures.get(name, []) if key in plots]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    def img(p: Path) -> str:
        return f'<img alt="{escape(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'

    html = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{escape(title)}</title>",
            ("<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
             "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
             "vertical-align:top}th{background:#f3f3f3}img{max-width:100%}</style></head><body>"),
            f"<h1>{escape(title)}</h1><ul>", *[f"<li>{escape(line)}</li>" for line in intro], "</ul>"]
    for name, df in sections:
        html.append(f"<h2>{escape(name)}</h2>")
        html.append(df.to_html(index=False, escape=True, border=0) if not df.empty else "<p>(none)</p>")
        html += [img(plots[key]) for key in figures.get(name, []) if key in plots]
    html.append("</body></html>")
    html_path = out / "report.html"
    html_path.write_text("\n".join(html))
    return [md_path, html_path, *plots.values()]
