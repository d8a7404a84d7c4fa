"""The base of every config section: unknown keys rejected, assignments validated.

Imports nothing from the app, so each stage's config module (app/<stage>/config.py) and the
experiment tree (app/config.py) can build on it.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def strictly_rising(values: list[int], what: str = "concurrencies") -> list[int]:
    """A validator's rule for load levels: each larger than the last (ValueError otherwise)."""
    if values != sorted(set(values)):
        raise ValueError(f"{what} must rise strictly, got {values}")
    return values


def duplicates(items: list[str]) -> list[str]:
    return sorted({m for m in items if items.count(m) > 1})


def int4_group_size(v: int) -> int:
    """The rule for an INT4 group size (``quantize.group_size``, ``training.qat.group_size``): packed
    eight values to an int32 word, so a multiple of 8. Whether it divides the model's layers is checked
    against the model where one is at hand."""
    if v < 8 or v % 8:
        raise ValueError(f"group_size must be a multiple of 8 (INT4 values are packed eight to a word), got {v}")
    return v


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only: localhost, 127.0.0.0/8 or ::1."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
