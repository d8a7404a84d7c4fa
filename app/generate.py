"""Greedy chat generation with Hugging Face transformers: the reference path for quick checks.

Served and batch generation go through vLLM; this path exists for sanity checks on a freshly
stored checkpoint and as the baseline vLLM is measured against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


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
