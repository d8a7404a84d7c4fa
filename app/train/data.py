"""Training examples from QA records: chat-formatted token ids with answer-only labels.

Plain functions (one of them the Ray Data tokenization step); batching and the loss live in
:mod:`app.train.batching`.

An example is ``{"input_ids": [...], "labels": [...]}`` where ``labels`` is -100 on every prompt
token (system, user turn with context and question, the assistant header) and equals the token on
the answer and its end-of-turn marker, so the loss is on the answer only.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np
import pandas as pd

from app.config import PromptConfig
from app.errors import AppError
from app.eval.config import RetrievalConfig
from app.eval.testset import Retriever
from app.prompts import qa_messages, truncate_context
from app.train.batching import IGNORE_INDEX

# Deferred imports: transformers is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


class TemplateError(AppError, ValueError):
    """The model's chat template does not render a prompt as a prefix of the same prompt with its answer."""


def _ids(encoded: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True) unless told otherwise
    return list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded)


def with_distractors(context: str, distractors: list[str], source_at: int, tokenizer: Any, max_tokens: int) -> str:
    """The source passage whole (its first ``max_tokens`` tokens) at position ``source_at`` among the
    distractor passages, which share what is left of the budget in order (later ones cut first)."""
    source = truncate_context(context, tokenizer, max_tokens)
    left = max_tokens - len(tokenizer(source, add_special_tokens=False)["input_ids"])
    kept = []
    for d in distractors:
        if left < 32:  # a scrap of a passage teaches nothing
            break
        d = truncate_context(d, tokenizer, left)
        kept.append(d)
        left -= len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 2
    passages = kept[:source_at] + [source] + kept[source_at:]
    return "\n\n".join(p.strip() for p in passages)


def encode_example(tokenizer: Any, question: str, answer: str, context: str | None,
                   prompt: PromptConfig, distractors: list[str] | None = None,
                   source_at: int = 0) -> dict[str, list[int]]:
    """Token ids of the whole conversation and labels masked to the answer (with ``distractors``,
    the context is the source passage among them: see :func:`with_distractors`).

    Raises TemplateError when the template renders the prompt differently once an answer follows
    (the answer span could not be located reliably).
    """
    if prompt.use_context and context and distractors:
        context = with_distractors(context, distractors, source_at, tokenizer, prompt.max_context_tokens)
    elif prompt.use_context and context:
        context = truncate_context(context, tokenizer, prompt.max_context_tokens)
    prompt_ids = _ids(tokenizer.apply_chat_template(qa_messages(question, context, prompt), add_generation_prompt=True,
                                                    tokenize=True, return_dict=False))
    full_ids = _ids(tokenizer.apply_chat_template(qa_messages(question, context, prompt, answer=answer),
                                                  tokenize=True, return_dict=False))
    if full_ids[:len(prompt_ids)] != prompt_ids or len(full_ids) <= len(prompt_ids):
        raise TemplateError("the chat template does not render the prompt as a prefix of prompt + answer; "
                            "answer-only loss needs a template that appends the assistant turn")
    return {"input_ids": full_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids):]}


@functools.lru_cache(maxsize=2)
def _tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def tokenize_batch(batch: pd.DataFrame, model_path: str, prompt: dict[str, Any], max_seq_len: int) -> pd.DataFrame:
    """Ray Data ``map_batches`` function: QA records -> examples, flagging those over ``max_seq_len``.

    Adds columns input_ids, labels (int64 arrays, cut to max_seq_len), n_tokens, n_answer_tokens and
    too_long; the other columns pass through. The tokenizer is loaded once per worker process.
    """
    tokenizer = _tokenizer(model_path)
    cfg = PromptConfig.model_validate(prompt)
    ids, labels, n_tokens, n_answer, too_long = [], [], [], [], []
    contexts = batch["context"] if "context" in batch else [None] * len(batch)
    distractors = batch["distractors"] if "distractors" in batch else [None] * len(batch)
    positions = batch["source_at"] if "source_at" in batch else [0] * len(batch)
    for q, a, c, d, at in zip(batch["question"], batch["answer"], contexts, distractors, positions):
        ex = encode_example(tokenizer, str(q), str(a), c if isinstance(c, str) else None, cfg,
                            [str(x) for x in d] if isinstance(d, (list, np.ndarray)) and len(d) else None, int(at))
        n = len(ex["input_ids"])
        ids.append(np.asarray(ex["input_ids"][:max_seq_len], dtype=np.int64))
        labels.append(np.asarray(ex["labels"][:max_seq_len], dtype=np.int64))
        n_tokens.append(n)
        n_answer.append(sum(t != IGNORE_INDEX for t in ex["labels"]))
        too_long.append(n > max_seq_len)
    return batch.assign(input_ids=ids, labels=labels, n_tokens=n_tokens, n_answer_tokens=n_answer, too_long=too_long)


def add_distractors(frame: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Columns ``distractors`` (the ``k`` passages other than the example's own that BM25 ranks best
    for its question, among the frame's distinct contexts; none when ``k`` is 0) and ``source_at``
    (where the own passage goes among them, uniform and seeded by pair id): training contexts that
    look like retrieval's."""
    passages = sorted(set(frame["context"].dropna()) - {""})
    if k == 0 or len(passages) < 2:
        return frame.assign(distractors=[[] for _ in range(len(frame))], source_at=0)
    hits = Retriever([{"text": p} for p in passages], RetrievalConfig(method="bm25", top_k=k + 1)).search(
        frame["question"].tolist())
    out, where = [], []
    for pair_id, context, row in zip(frame["pair_id"], frame["context"], hits):
        others = [passages[i] for i, _ in row if passages[i] != context][:k]
        out.append(others)
        where.append(random.Random(f"{seed}:{pair_id}").randint(0, len(others)))
    return frame.assign(distractors=out, source_at=where)

