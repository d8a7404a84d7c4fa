"""Human evaluation of model answers: studies, annotator accounts, blind assignments, ratings.

A study is made from an evaluation run: for a sample of its test examples, every model's answer
becomes a *single* item (rubric: correctness, groundedness, helpfulness, 1-5) and every other
model against the reference model a *pair* item (preference: A, B or tie). Annotators never see
which model wrote an answer: items are shuffled per annotator and the sides of a pair are drawn at
random. Every item goes to ``per_item`` annotators (at least two, for agreement), dealt so that
the work is balanced and every pair of annotators shares items.

Everything is kept in a SQLAlchemy database (SQLite by default); ratings can be changed by their
author and nothing is deleted. Annotators log in with their name and a token printed once when the
study is created (only its hash is stored); their sessions are kept in the database too (hashed),
so a restarted server does not log anybody out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import numbers
import random
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db import as_utc, open_database, utc_column, utc_now
from app.errors import AppError
from app.eval.testset import sample

CRITERIA = ("correctness", "groundedness", "helpfulness")
PREFERENCES = ("A", "B", "tie")
SCALE = (1, 5)
SESSION_DAYS = 14  # a login lasts this long (or until logout)


class HumanEvalError(AppError, ValueError):
    """Bad input to the human-evaluation store; the message names the problem."""


class Base(DeclarativeBase):
    """The human-evaluation database's tables (their own metadata)."""


class Study(Base):
    __tablename__ = "he_studies"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    eval_run: Mapped[str] = mapped_column(Text)
    models: Mapped[str] = mapped_column(Text)  # JSON list, the first is the reference of pair items
    per_item: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = utc_column()


class Annotator(Base):
    __tablename__ = "he_annotators"
    __table_args__ = (UniqueConstraint("study", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(ForeignKey("he_studies.name"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    # An annotator logs in with an account's password (user_id, app.accounts) or with the study's token.
    token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = utc_column()


class Item(Base):
    __tablename__ = "he_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(ForeignKey("he_studies.name"), index=True)
    example_id: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(10))  # single | pair
    question: Mapped[str] = mapped_column(Text)
    context: Mapped[str] = mapped_column(Text, default="")
    reference: Mapped[str] = mapped_column(Text, default="")
    model_a: Mapped[str] = mapped_column(String(200))  # hidden from annotators
    answer_a: Mapped[str] = mapped_column(Text)
    model_b: Mapped[str | None] = mapped_column(String(200), nullable=True)
    answer_b: Mapped[str | None] = mapped_column(Text, nullable=True)


class Assignment(Base):
    __tablename__ = "he_assignments"
    __table_args__ = (UniqueConstraint("item_id", "annotator_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("he_items.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("he_annotators.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # this annotator's order (shuffled)


class Rating(Base):
    __tablename__ = "he_ratings"
    __table_args__ = (UniqueConstraint("item_id", "annotator_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("he_items.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("he_annotators.id"), index=True)
    correctness: Mapped[int | None] = mapped_column(Integer, nullable=True)
    groundedness: Mapped[int | None] = mapped_column(Integer, nullable=True)
    helpfulness: Mapped[int | None] = mapped_column(Integer, nullable=True)
    preference: Mapped[str | None] = mapped_column(String(4), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = utc_column()
    updated_at: Mapped[datetime] = utc_column()


class LoginSession(Base):
    __tablename__ = "he_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the session id
    annotator_id: Mapped[int] = mapped_column(ForeignKey("he_annotators.id"), index=True)
    created_at: Mapped[datetime] = utc_column()


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def deal(n_items: int, annotators: int, per_item: int, seed: int) -> list[list[int]]:
    """Annotator indices for each item: ``per_item`` distinct ones, loads balanced.

    Item i goes to a window of ``per_item`` consecutive annotators starting at i * stride, so each
    annotator gets n_items * per_item / annotators items (+-1) and, when per_item >= 2, neighbouring
    annotators share items (every pair does when the windows wrap around enough items).
    """
    if per_item < 2:
        raise HumanEvalError(f"every item needs at least two annotators for agreement; per_item={per_item}")
    if per_item > annotators:
        raise HumanEvalError(f"per_item={per_item} but only {annotators} annotators")
    order = list(range(annotators))
    random.Random(seed).shuffle(order)
    return [[order[(i + j) % annotators] for j in range(per_item)] for i in range(n_items)]


class HumanEvalStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine, self._session = open_database(url, Base.metadata, HumanEvalError, "human evaluation",
                                                   migrations="human")

    def close(self) -> None:
        self.engine.dispose()

    # -- studies -----------------------------------------------------------------------------------

    def create_study(self, name: str, eval_run: Path, annotators: list[str], per_item: int = 2,
                     examples: int = 20, seed: int = 0, pairwise: bool = True,
                     accounts: dict[str, int] | None = None) -> dict[str, Any]:
        """A study over ``examples`` examples of an evaluation run.

        Annotators named in ``accounts`` (name -> account id, app.accounts) log in with their account's
        password; every other annotator gets a login token, returned here once (only its hash is stored).
        """
        accounts = accounts or {}
        names = [a.strip() for a in annotators]
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise HumanEvalError(f"study name {name!r}: use letters, digits, '.', '-' or '_'")
        if any(not a for a in names) or len(set(names)) != len(names):
            raise HumanEvalError(f"annotator names must be non-empty and distinct: {annotators}")
        summary_file, table_file = eval_run / "summary.json", eval_run / "examples.parquet"
        if not summary_file.is_file() or not table_file.is_file():
            raise HumanEvalError(f"{eval_run} is not an evaluation run (summary.json and examples.parquet needed)")
        models = json.loads(summary_file.read_text())["models"]
        table = sample(pd.read_parquet(table_file), examples, seed)
        rng = random.Random(seed)
        items: list[dict[str, Any]] = []
        for r in table.to_dict("records"):
            base = {"example_id": r["example_id"], "question": r["question"], "context": r.get("context") or "",
                    "reference": r["reference"]}
            for m in models:
                items.append({**base, "kind": "single", "model_a": m, "answer_a": r[f"{m}__answer"]})
            if pairwise:
                for m in models[1:]:
                    a, b = (models[0], m) if rng.random() < 0.5 else (m, models[0])
                    items.append({**base, "kind": "pair", "model_a": a, "answer_a": r[f"{a}__answer"],
                                  "model_b": b, "answer_b": r[f"{b}__answer"]})
        rng.shuffle(items)
        dealt = deal(len(items), len(names), per_item, seed)
        tokens = {a: secrets.token_urlsafe(12) for a in names if a not in accounts}
        with self._session.begin() as s:
            if s.get(Study, name) is not None:
                raise HumanEvalError(f"study {name!r} exists (ratings are never overwritten); pick another name")
            # Flushed table by table: without ORM relationships the unit of work does not order
            # inserts by foreign keys.
            s.add(Study(name=name, eval_run=str(eval_run), models=json.dumps(models), per_item=per_item, seed=seed))
            s.flush()
            people = [Annotator(study=name, name=a, token_hash=_hash(tokens[a]) if a in tokens else None,
                                user_id=accounts.get(a)) for a in names]
            rows = [Item(study=name, **it) for it in items]
            s.add_all([*people, *rows])
            s.flush()
            queues: dict[int, list[int]] = {i: [] for i in range(len(names))}
            for row, who in zip(rows, dealt):
                for w in who:
                    queues[w].append(row.id)
            for w, ids in queues.items():
                rng.shuffle(ids)
                s.add_all(Assignment(item_id=i, annotator_id=people[w].id, position=p) for p, i in enumerate(ids))
        return {"study": name, "items": len(items), "examples": len(table), "models": models, "per_item": per_item,
                "tokens": tokens, "accounts": sorted(a for a in names if a in accounts), "assignments": {a: len(queues[i]) for i, a in enumerate(names)}}

    def _study(self, s, name: str) -> Study:
        st = s.get(Study, name)
        if st is None:
            known = s.scalars(select(Study.name)).all()
            raise HumanEvalError(f"no study {name!r} (studies: {known})")
        return st

    def studies(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(Study.name).order_by(Study.created_at)))

    def study(self, name: str) -> dict[str, Any]:
        with self._session() as s:
            st = self._study(s, name)
            return {"name": st.name, "eval_run": st.eval_run, "models": json.loads(st.models), "per_item": st.per_item}

    # -- annotators ------------------------------------------------------------------------------

    def login(self, study: str, name: str, secret: str,
              account_id: Callable[[str, str], int | None] | None = None) -> int:
        """The annotator's id when ``secret`` is theirs; HumanEvalError otherwise (one message for every cause).

        An annotator linked to an account proves it with the account's password: ``account_id(name,
        password)`` returns the account's id (None when the password is wrong or the account may not
        annotate). Any other annotator gives the study's token.
        """
        with self._session() as s:
            a = s.scalar(select(Annotator).where(Annotator.study == study, Annotator.name == name))
        if a is not None and a.user_id is not None:
            ok = account_id is not None and account_id(name, secret or "") == a.user_id
        else:
            ok = a is not None and a.token_hash is not None and hmac.compare_digest(a.token_hash, _hash(secret or ""))
        if not ok:
            raise HumanEvalError("unknown study, annotator, password or token")
        return a.id

    def open_session(self, annotator_id: int) -> str:
        """A new session id for a logged-in annotator (only its hash is stored)."""
        sid = secrets.token_urlsafe(24)
        with self._session() as s, s.begin():
            s.add(LoginSession(id_hash=_hash(sid), annotator_id=annotator_id))
        return sid

    def session_annotator(self, sid: str) -> int | None:
        """The annotator of a session id, or None when it is unknown or older than SESSION_DAYS."""
        if not sid:
            return None
        with self._session() as s:
            row = s.get(LoginSession, _hash(sid))
            if row is None:
                return None
            return row.annotator_id if utc_now() - as_utc(row.created_at) < timedelta(days=SESSION_DAYS) else None

    def close_session(self, sid: str) -> None:
        with self._session() as s, s.begin():
            row = s.get(LoginSession, _hash(sid or ""))
            if row is not None:
                s.delete(row)

    def annotator(self, annotator_id: int) -> dict[str, Any]:
        with self._session() as s:
            a = s.get(Annotator, annotator_id)
            if a is None:
                raise HumanEvalError(f"no annotator {annotator_id}")
            return {"id": a.id, "study": a.study, "name": a.name}

    def progress(self, annotator_id: int) -> dict[str, int]:
        with self._session() as s:
            total = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.annotator_id == annotator_id))
            done = s.scalar(select(func.count()).select_from(Rating).where(Rating.annotator_id == annotator_id))
            return {"done": int(done or 0), "total": int(total or 0)}

    @staticmethod
    def _blind(item: Item) -> dict[str, Any]:
        """What an annotator sees: never the models' names."""
        out = {"item_id": item.id, "kind": item.kind, "question": item.question, "context": item.context,
               "reference": item.reference}
        if item.kind == "single":
            out["answer"] = item.answer_a
        else:
            out["answer_a"], out["answer_b"] = item.answer_a, item.answer_b
        return out

    def next_item(self, annotator_id: int) -> dict[str, Any] | None:
        """The annotator's first assigned item without a rating from them, blind; None when all are done."""
        with self._session() as s:
            rated = select(Rating.item_id).where(Rating.annotator_id == annotator_id)
            item = s.scalar(select(Item).join(Assignment, Assignment.item_id == Item.id)
                            .where(Assignment.annotator_id == annotator_id, Item.id.not_in(rated))
                            .order_by(Assignment.position).limit(1))
            return self._blind(item) if item else None

    def item_for(self, annotator_id: int, item_id: int) -> dict[str, Any]:
        with self._session() as s:
            item = self._assigned(s, annotator_id, item_id)
            out = self._blind(item)
            r = s.scalar(select(Rating).where(Rating.item_id == item_id, Rating.annotator_id == annotator_id))
            if r is not None:
                out["rating"] = {**{c: getattr(r, c) for c in CRITERIA}, "preference": r.preference, "note": r.note}
            return out

    @staticmethod
    def _assigned(s, annotator_id: int, item_id: Any) -> Item:
        try:
            item_id = int(item_id)
        except (TypeError, ValueError):
            raise HumanEvalError(f"item id must be an integer, got {item_id!r}") from None
        ok = s.scalar(select(Assignment.id).where(Assignment.item_id == item_id, Assignment.annotator_id == annotator_id))
        if ok is None:
            raise HumanEvalError(f"item {item_id} is not assigned to you")
        return s.get(Item, item_id)

    @staticmethod
    def _scale_value(field: str, v: Any) -> int:
        """A rubric score as an int in SCALE. Accepted: an int, a float with no fractional part (4.0, as
        some JSON clients send), integer text ("4", as forms send). Refused, with the field and the range
        named: a missing value, a boolean, a fractional or non-finite float, other text, anything else,
        and a whole number outside the scale."""
        allowed = f"{field} must be a whole number from {SCALE[0]} to {SCALE[1]}"
        if v is None:
            raise HumanEvalError(f"{allowed}; it is missing")
        if isinstance(v, bool):
            raise HumanEvalError(f"{allowed}, got the boolean {v!r}")
        if isinstance(v, numbers.Integral):
            n = int(v)
        elif isinstance(v, numbers.Real):
            if not math.isfinite(v) or not float(v).is_integer():
                raise HumanEvalError(f"{allowed}, got {v!r}")
            n = int(v)
        elif isinstance(v, str):
            if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", v):
                raise HumanEvalError(f"{allowed}, got {v!r}")
            n = int(v)
        else:
            raise HumanEvalError(f"{allowed}, got {type(v).__name__} {v!r}")
        if not SCALE[0] <= n <= SCALE[1]:
            raise HumanEvalError(f"{allowed}, got {n}")
        return n

    @classmethod
    def _rating_values(cls, kind: str, scores: dict[str, Any]) -> dict[str, Any]:
        """The columns of a rating of an item of ``kind``, every field checked (HumanEvalError on the
        first refused one): a single item's three CRITERIA scores, a pair item's preference, and an
        optional note (text, kept to 2000 characters). Other fields are ignored."""
        note = scores.get("note")
        if note is not None and not isinstance(note, str):
            raise HumanEvalError(f"note must be text, got {type(note).__name__} {note!r}")
        values: dict[str, Any] = {"note": (note or "")[:2000]}
        if kind == "single":
            for c in CRITERIA:
                values[c] = cls._scale_value(c, scores.get(c))
        else:
            pref = scores.get("preference")
            if not isinstance(pref, str) or pref not in PREFERENCES:
                raise HumanEvalError(f"preference must be one of {list(PREFERENCES)}, got {pref!r}")
            values["preference"] = pref
        return values

    def rate(self, annotator_id: int, item_id: Any, scores: dict[str, Any]) -> dict[str, Any]:
        """Record (or change) the annotator's rating of an item they were assigned; every field is
        checked first (:meth:`_rating_values`), and nothing is stored when one is refused."""
        with self._session.begin() as s:
            item = self._assigned(s, annotator_id, item_id)
            values = self._rating_values(item.kind, scores)
            r = s.scalar(select(Rating).where(Rating.item_id == item.id, Rating.annotator_id == annotator_id))
            if r is None:
                s.add(Rating(item_id=item.id, annotator_id=annotator_id, **values))
            else:
                for k, v in values.items():
                    setattr(r, k, v)
                r.updated_at = utc_now()
        return {"item_id": item.id, **values}

    # -- results ---------------------------------------------------------------------------------

    def ratings(self, study: str) -> pd.DataFrame:
        """Every rating of a study with the (unblinded) models and the item's example, one row each."""
        with self._session() as s:
            self._study(s, study)
            rows = s.execute(select(Rating, Item, Annotator.name).join(Item, Rating.item_id == Item.id)
                             .join(Annotator, Rating.annotator_id == Annotator.id).where(Item.study == study)).all()
        cols = ["item_id", "example_id", "kind", "annotator", "model_a", "model_b", *CRITERIA, "preference", "note"]
        return pd.DataFrame([{"item_id": i.id, "example_id": i.example_id, "kind": i.kind, "annotator": who,
                              "model_a": i.model_a, "model_b": i.model_b, **{c: getattr(r, c) for c in CRITERIA},
                              "preference": r.preference, "note": r.note} for r, i, who in rows], columns=cols)

    def status(self, study: str) -> dict[str, Any]:
        with self._session() as s:
            st = self._study(s, study)
            people = s.scalars(select(Annotator).where(Annotator.study == study).order_by(Annotator.id)).all()
            items = s.scalar(select(func.count()).select_from(Item).where(Item.study == study))
        per = {a.name: self.progress(a.id) for a in people}
        return {"study": study, "eval_run": st.eval_run, "items": int(items or 0), "per_item": st.per_item,
                "annotators": per, "ratings": sum(p["done"] for p in per.values()),
                "expected": sum(p["total"] for p in per.values())}
