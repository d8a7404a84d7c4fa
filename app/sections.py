"""The base of every config section: unknown keys rejected, assignments validated.

Imports nothing from the app, so each stage's config module (app/<stage>/config.py) and the
experiment tree (app/config.py) can build on it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def duplicates(items: list[str]) -> list[str]:
    return sorted({m for m in items if items.count(m) > 1})
