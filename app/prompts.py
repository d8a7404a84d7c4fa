"""How a QA record becomes a chat conversation: one format for training, evaluation and serving.

A fine-tuned model answers best when it is asked the way it was trained, so every stage that
prompts a model with (context, question) builds its messages here, from the ``prompt`` section.
"""

from __future__ import annotations

from typing import Any

from app.config import PromptConfig


def truncate_context(context: str, tokenizer: Any, max_tokens: int) -> str:
    """The first ``max_tokens`` tokens of ``context`` (whole text when shorter)."""
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return context
    return tokenizer.decode(ids[:max_tokens])


def qa_messages(question: str, context: str | None, prompt: PromptConfig,
                answer: str | None = None) -> list[dict[str, str]]:
    """System (optional) + user turn; with ``answer``, the assistant turn too (a training example)."""
    if prompt.use_context and context:
        user = prompt.template.format(context=context.strip(), question=question.strip())
    else:
        user = prompt.no_context_template.format(question=question.strip())
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages.append({"role": "user", "content": user})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer.strip()})
    return messages
