"""Greedy chat generation with Hugging Face transformers: the reference path for quick checks.

Served and batch generation go through vLLM; this path exists for sanity checks on a freshly
stored checkpoint and as the baseline vLLM is measured against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Deferred imports: torch, transformers are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


@dataclass(frozen=True)
class Answer:
    question: str
    answer: str
    new_tokens: int
    seconds: float


def load_for_generation(model_dir: Path, dtype: str = "bfloat16"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.eval()
    return model, tokenizer


def answer_questions(
    model_dir: Path,
    questions: list[str],
    max_new_tokens: int = 48,
    dtype: str = "bfloat16",
    on_answer: Callable[[Answer], None] | None = None,
) -> list[Answer]:
    """Greedy answers, one question at a time, with the model's own chat template."""
    import torch

    model, tokenizer = load_for_generation(model_dir, dtype)
    out = []
    for q in questions:
        start = time.perf_counter()
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        new = ids[0][enc["input_ids"].shape[1]:]
        a = Answer(q, tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), time.perf_counter() - start)
        out.append(a)
        if on_answer:
            on_answer(a)
    return out


def generate_batch(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                   batch_size: int = 8, synced_gpus: bool = False) -> list[str]:
    """Greedy answers to chat conversations, ``batch_size`` at a time with left padding.

    ``synced_gpus`` keeps data-parallel ranks stepping together (needed under ZeRO-3, where every
    forward gathers parameters from all ranks): each rank must then call this the same number of
    times with the same ``batch_size``.
    """
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    try:
        for i in range(0, len(conversations), batch_size):
            enc = tokenizer.apply_chat_template(conversations[i:i + batch_size], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True, padding=True)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.inference_mode():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                                     synced_gpus=synced_gpus)
            new = ids[:, enc["input_ids"].shape[1]:]
            out.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return out
