"""Secrets never leave in logs or written configs: :func:`redact` blanks the values of secret-looking keys.

Belt and braces: API keys are not config values at all (a config names an environment variable,
``*_env``, or a file, ``*_file``, holding them), yet a secret can still reach a config through a
free-form mapping such as ``serving.engine_kwargs`` (``hf_token: ...``). Whatever is logged as
MLflow params, stored as a run's ``config.yaml`` or written as a Serve config goes through here.

This module imports nothing from the app: every layer may use it.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# Words that make a key name a secret's. "token" is one, but not after the words of a tokenizer's
# special tokens (pad_token, eos_token hold text like "</s>"), and "tokens" (max_tokens) is a count.
_SECRET_WORDS = {"password", "passwd", "passphrase", "secret", "secrets", "token", "apikey", "credential",
                 "credentials", "authorization", "cookie"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("auth", "key"), ("signing", "key")}
_SPECIAL_TOKEN_WORDS = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "start", "end", "stop", "image"}
# Names that hold where a secret is (an environment variable's name, a file's path), not the secret.
_POINTER_SUFFIXES = ("_env", "_file", "_path", "_var")


def is_secret_name(name: str) -> bool:
    """Whether a key named ``name`` (for a dotted path, its last part) looks like it holds a secret."""
    last = str(name).rsplit(".", 1)[-1]
    # camelCase to snake_case, then words.
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", last).lower()
    if snake.endswith(_POINTER_SUFFIXES):
        return False
    words = [w for w in re.split(r"[^a-z0-9]+", snake) if w]
    for i, word in enumerate(words):
        if word == "token" and i and words[i - 1] in _SPECIAL_TOKEN_WORDS:
            continue
        if word in _SECRET_WORDS:
            return True
        if i and (words[i - 1], word) in _SECRET_PAIRS:
            return True
    return False


def redact(value: Any) -> Any:
    """A copy of ``value`` (mappings and lists, recursively) with every non-empty value under a
    secret-looking key replaced by ``"***"``. Empty values (None, "") stay: they hide nothing."""
    if isinstance(value, dict):
        return {k: (MASK if is_secret_name(str(k)) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value
