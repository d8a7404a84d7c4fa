"""Batches and the loss: tensors only (no config, no Ray), so GPU benchmarks can import them alone.

An example is ``{"input_ids": [...], "labels": [...]}`` where ``labels`` is -100 on every prompt
token and equals the token on the answer (see :func:`app.train.data.encode_example`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

# Deferred imports: torch is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

IGNORE_INDEX = -100


def _fill(rows: list[dict[str, Any]], pad_id: int, left: bool) -> tuple[Any, Any, list[slice]]:
    """input_ids and labels of ``rows`` padded to the longest (pad_id / -100), and each row's span."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    spans = []
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        span = slice(width - k, width) if left else slice(0, k)
        ids[i, span] = torch.as_tensor(np.asarray(r["input_ids"]), dtype=torch.long)
        labels[i, span] = torch.as_tensor(np.asarray(r["labels"]), dtype=torch.long)
        spans.append(span)
    return ids, labels, spans


def pad_batch(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Left-padded tensors: input_ids, labels (-100 on padding), attention_mask, position_ids.

    Left padding puts every answer at the end of its row, so the positions whose logits matter
    (:func:`loss_positions`) are a short common tail of the batch.
    """
    import torch

    ids, labels, spans = _fill(examples, pad_id, left=True)
    mask = torch.zeros_like(ids)
    for i, span in enumerate(spans):
        mask[i, span] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": position_ids}


def pack_examples(examples: Iterable[dict[str, Any]], max_len: int) -> Iterator[dict[str, list[int]]]:
    """Greedy first-fit-in-order packing into sequences of at most ``max_len`` tokens.

    Each packed sequence carries position_ids that restart at 0 for every example: transformers
    turns that into a block-diagonal causal mask (no attention across examples) when no
    attention_mask is given. A label never crosses examples: the first token of each example is
    a prompt token, whose label is -100.
    """
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for e in examples:
        e_ids, e_labels = list(e["input_ids"])[:max_len], list(e["labels"])[:max_len]
        if ids and len(ids) + len(e_ids) > max_len:
            yield {"input_ids": ids, "labels": labels, "position_ids": pos}
            ids, labels, pos = [], [], []
        ids += e_ids
        labels += e_labels
        pos += list(range(len(e_ids)))
    if ids:
        yield {"input_ids": ids, "labels": labels, "position_ids": pos}


def pad_packed(sequences: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded packed sequences, no attention_mask (so packing is detected from position_ids).

    Padding continues the positions of the last example in its row and has label -100, so it is
    attended by nothing that is scored.
    """
    import torch

    ids, labels, spans = _fill(sequences, pad_id, left=False)
    position_ids = torch.zeros_like(ids)
    for i, (seq, span) in enumerate(zip(sequences, spans)):
        position_ids[i, span] = torch.as_tensor(seq["position_ids"])
        last = seq["position_ids"][-1]
        position_ids[i, span.stop:] = torch.arange(last + 1, last + 1 + ids.shape[1] - span.stop)
    return {"input_ids": ids, "labels": labels, "position_ids": position_ids}


def loss_positions(labels: Any) -> Any:
    """Sequence positions whose next token has a label, over the whole batch (sorted, 1-D).

    Only these positions' logits enter the loss; asking the model for just them skips most of the
    vocabulary projection and its memory (the prompt, usually most of the sequence, is never scored).
    """
    import torch

    scored = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)
    return torch.nonzero(scored, as_tuple=False).flatten()


def causal_lm_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """(mean cross-entropy over answer tokens, number of answer tokens) for one batch.

    The model computes logits only at :func:`loss_positions` (``logits_to_keep`` with indices).
    """
    import torch

    labels = batch["labels"]
    keep = loss_positions(labels)
    n_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if keep.numel() == 0:  # nothing to score (cannot happen with encode_example, kept for safety)
        out = model(**inputs, use_cache=False, logits_to_keep=1)
        return out.logits.sum() * 0.0, 0
    out = model(**inputs, use_cache=False, logits_to_keep=keep)
    targets = labels[:, keep + 1]
    loss = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]),
                                             targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / max(n_tokens, 1), n_tokens
