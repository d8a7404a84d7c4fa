"""Human review and correction of QA pairs, kept in a database that outlives dataset rebuilds.

The store holds one row per pair (``review_items``) and an append-only log of every change a person made
(``review_events``). Nothing is ever deleted: a rebuild (``sync``) adds new pairs and refreshes pending ones,
but never touches the text or status of a pair a reviewer approved, edited or rejected. The dataset build
reads the reviewers' verdicts back with ``decisions`` and lets them override the generated pairs.

SQLite by default (any SQLAlchemy URL works). Timestamps are UTC.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    and_,
    func,
    or_,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from app.db import iso, open_database, utc_column, utc_now, write_session
from app.errors import AppError

STATUSES = ("pending", "approved", "edited", "rejected")
REVIEWED = ("approved", "edited", "rejected")
ACTIONS = ("approve", "edit", "reject", "reopen")
EVENT_ACTIONS = (*ACTIONS, "import")

# Fields a rebuild may refresh on a pending item (the generator's output and its source).
SOURCE_FIELDS = ("generator", "origin", "topic", "doc_id", "doc_path", "doc_title", "section", "chunk_id", "context",
                 "evidence")
ITEM_FIELDS = ("pair_id", "dataset", "status", "question", "answer", "orig_question", "orig_answer", "reviewer",
               "reviewed_at", "note", *SOURCE_FIELDS, "auto_accepted", "reject_reason", "first_seen_build",
               "last_seen_build", "created_at")
EVENT_FIELDS = ("id", "pair_id", "reviewer", "user_id", "action", "status_before", "status_after", "question_before",
                "question_after", "answer_before", "answer_after", "note", "created_at")


class ReviewError(AppError, ValueError):
    """Bad input to the review store; the message names the problem."""


class UnknownPairError(ReviewError):
    """No review item has this pair id."""


class Base(DeclarativeBase):
    """The review database's tables (their own metadata)."""


class ReviewItem(Base):
    __tablename__ = "review_items"

    pair_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(200), default="", index=True)
    first_seen_build: Mapped[str] = mapped_column(String(200), default="")
    last_seen_build: Mapped[str] = mapped_column(String(200), default="")
    generator: Mapped[str] = mapped_column(String(64), default="", index=True)
    origin: Mapped[str] = mapped_column(Text, default="")
    topic: Mapped[str] = mapped_column(String(200), default="", index=True)
    doc_id: Mapped[str] = mapped_column(String(200), default="")
    doc_path: Mapped[str] = mapped_column(Text, default="")
    doc_title: Mapped[str] = mapped_column(Text, default="")
    section: Mapped[str] = mapped_column(Text, default="")
    chunk_id: Mapped[str] = mapped_column(String(200), default="")
    context: Mapped[str] = mapped_column(Text, default="")
    evidence: Mapped[str] = mapped_column(Text, default="")
    orig_question: Mapped[str] = mapped_column(Text, default="")
    orig_answer: Mapped[str] = mapped_column(Text, default="")
    question: Mapped[str] = mapped_column(Text, default="")
    answer: Mapped[str] = mapped_column(Text, default="")
    auto_accepted: Mapped[bool] = mapped_column(Boolean, default=True)
    reject_reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    reviewer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = utc_column()


class ReviewEvent(Base):
    __tablename__ = "review_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pair_id: Mapped[str] = mapped_column(ForeignKey("review_items.pair_id"), index=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    # The authenticated account (app.accounts) that acted; None for events from before accounts existed.
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(16))
    status_before: Mapped[str] = mapped_column(String(16), default="")
    status_after: Mapped[str] = mapped_column(String(16), default="")
    question_before: Mapped[str] = mapped_column(Text, default="")
    question_after: Mapped[str] = mapped_column(Text, default="")
    answer_before: Mapped[str] = mapped_column(Text, default="")
    answer_after: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = utc_column()


def _item_dict(item: ReviewItem) -> dict[str, Any]:
    out = {k: getattr(item, k) for k in ITEM_FIELDS}
    out["reviewed_at"] = iso(item.reviewed_at)
    out["created_at"] = iso(item.created_at)
    out["auto_accepted"] = bool(item.auto_accepted)
    return out


def _event_dict(ev: ReviewEvent) -> dict[str, Any]:
    out = {k: getattr(ev, k) for k in EVENT_FIELDS}
    out["created_at"] = iso(ev.created_at)
    return out


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _clean_reviewer(reviewer: Any) -> str:
    name = reviewer.strip() if isinstance(reviewer, str) else ""
    if not name:
        raise ReviewError("reviewer must be a non-empty name")
    return name


class ReviewStore:
    """Review items and their edit history in a SQLAlchemy database (tables are created when missing)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine, self._session = open_database(url, Base.metadata, ReviewError, "review",
                                                   migrations="review")

    def close(self) -> None:
        self.engine.dispose()

    # -- helpers ----------------------------------------------------------------------------------

    def _item(self, session: Session, pair_id: str) -> ReviewItem:
        item = session.get(ReviewItem, pair_id) if isinstance(pair_id, str) and pair_id else None
        if item is None:
            raise UnknownPairError(f"unknown pair id {pair_id!r}")
        return item

    @staticmethod
    def _check_status(status: str | None) -> None:
        if status is not None and status not in STATUSES:
            raise ReviewError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")

    @staticmethod
    def _order() -> tuple:
        # Accepted by the quality filter first, then by topic and document, so a reviewer reads in order.
        return (ReviewItem.auto_accepted.desc(), ReviewItem.topic, ReviewItem.doc_path, ReviewItem.chunk_id,
                ReviewItem.pair_id)

    @staticmethod
    def _after(item: ReviewItem):
        """Condition: an item sorts after ``item`` in ``_order``."""
        cols = [ReviewItem.topic, ReviewItem.doc_path, ReviewItem.chunk_id, ReviewItem.pair_id]
        vals = [item.topic, item.doc_path, item.chunk_id, item.pair_id]
        cond = cols[-1] > vals[-1]
        for col, val in zip(reversed(cols[:-1]), reversed(vals[:-1])):
            cond = or_(col > val, and_(col == val, cond))
        same_verdict = and_(ReviewItem.auto_accepted == bool(item.auto_accepted), cond)
        if item.auto_accepted:  # auto-rejected items come after every accepted one
            return or_(ReviewItem.auto_accepted == False, same_verdict)  # noqa: E712
        return same_verdict

    @staticmethod
    def _filtered(stmt, status: str | None, topic: str | None, generator: str | None):
        if status:
            stmt = stmt.where(ReviewItem.status == status)
        if topic:
            stmt = stmt.where(ReviewItem.topic == topic)
        if generator:
            stmt = stmt.where(ReviewItem.generator == generator)
        return stmt

    # -- rebuilds ---------------------------------------------------------------------------------

    def sync(self, pairs: Iterable[dict], dataset: str, build: str) -> dict[str, int]:
        """Record a build's pairs: new ones become pending, pending ones are refreshed, reviewed ones are kept.

        A reviewed item's question, answer and status never change here; only ``last_seen_build`` moves on.
        A pending item whose text a reviewer changed (then reopened) keeps that text too.
        """
        counts = {"new": 0, "refreshed": 0, "kept_reviewed": 0}
        with write_session(self._session) as session:
            seen: dict[str, ReviewItem] = {}
            batch: list[dict] = []

            def flush() -> None:
                ids = [p["pair_id"] for p in batch if p["pair_id"] not in seen]
                if ids:
                    for item in session.scalars(select(ReviewItem).where(ReviewItem.pair_id.in_(ids))):
                        seen[item.pair_id] = item
                for p in batch:
                    self._sync_one(session, seen, p, dataset, build, counts)
                batch.clear()

            for n, pair in enumerate(pairs, 1):
                if not isinstance(pair, dict) and hasattr(pair, "keys"):
                    pair = dict(pair)
                if not isinstance(pair, dict):
                    raise ReviewError(f"pair {n} is not a dict")
                pid = pair.get("pair_id")
                if not isinstance(pid, str) or not pid.strip():
                    raise ReviewError(f"pair {n} has no pair_id")
                for key in ("question", "answer"):
                    if not _text(pair.get(key)).strip():
                        raise ReviewError(f"pair {n} ({pid}) has an empty {key}")
                batch.append(pair)
                if len(batch) >= 500:
                    flush()
            flush()
        return counts

    @staticmethod
    def _sync_one(session: Session, seen: dict[str, ReviewItem], p: dict, dataset: str, build: str,
                  counts: dict[str, int]) -> None:
        pid = p["pair_id"]
        question, answer = _text(p.get("question")), _text(p.get("answer"))
        generated = {k: _text(p.get(k)) for k in SOURCE_FIELDS}
        accepted = bool(p.get("accepted", True))
        reason = _text(p.get("reject_reason"))
        item = seen.get(pid)
        if item is None:
            item = ReviewItem(pair_id=pid, dataset=dataset, first_seen_build=build, last_seen_build=build,
                              orig_question=question, orig_answer=answer, question=question, answer=answer,
                              auto_accepted=accepted, reject_reason=reason, status="pending", note="",
                              created_at=utc_now(), **generated)
            session.add(item)
            seen[pid] = item
            counts["new"] += 1
            return
        item.last_seen_build = build
        if item.status in REVIEWED:
            counts["kept_reviewed"] += 1
            return
        untouched = item.question == item.orig_question and item.answer == item.orig_answer
        for k, v in generated.items():
            setattr(item, k, v)
        item.dataset = dataset
        item.orig_question, item.orig_answer = question, answer
        if untouched:
            item.question, item.answer = question, answer
        item.auto_accepted, item.reject_reason = accepted, reason
        counts["refreshed"] += 1

    # -- reviewing --------------------------------------------------------------------------------

    def review(self, pair_id: str, reviewer: str, action: str, question: str | None = None,
               answer: str | None = None, note: str = "", user_id: int | None = None) -> dict[str, Any]:
        """Apply a reviewer's action (approve, edit, reject, reopen) and log it; return the item.

        ``reviewer`` is the acting account's name and ``user_id`` its id (app.accounts): the web app and
        the CLI pass the authenticated account, never a name typed into a form.
        """
        reviewer = _clean_reviewer(reviewer)
        if action not in ACTIONS:
            raise ReviewError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        note = _text(note).strip()
        with write_session(self._session) as session:
            item = self._item(session, pair_id)
            new_q, new_a = item.question, item.answer
            if action == "edit":
                if question is None and answer is None:
                    raise ReviewError("edit needs a question or an answer")
                if question is not None:
                    new_q = _text(question).strip()
                    if not new_q:
                        raise ReviewError("the edited question is empty")
                if answer is not None:
                    new_a = _text(answer).strip()
                    if not new_a:
                        raise ReviewError("the edited answer is empty")
                if (new_q, new_a) == (item.question, item.answer):
                    raise ReviewError("the edit changes neither the question nor the answer")
                status = "edited"
            else:
                changed = [name for name, given, current in (("question", question, item.question),
                                                              ("answer", answer, item.answer))
                           if given is not None and _text(given).strip() != current]
                if changed:
                    raise ReviewError(f"{action} keeps the current text but the {' and '.join(changed)} "
                                      "changed; save it as an edit")
                if action == "reopen" and item.status == "pending":
                    raise ReviewError(f"pair {pair_id} is already pending")
                status = {"approve": "approved", "reject": "rejected", "reopen": "pending"}[action]
            self._apply(session, item, reviewer, action, status, new_q, new_a, note, user_id)
            return _item_dict(item)

    @staticmethod
    def _apply(session: Session, item: ReviewItem, reviewer: str, action: str, status: str, question: str,
               answer: str, note: str | None, user_id: int | None = None) -> None:
        now = utc_now()
        session.add(ReviewEvent(pair_id=item.pair_id, reviewer=reviewer, user_id=user_id, action=action,
                                status_before=item.status,
                                status_after=status, question_before=item.question, question_after=question,
                                answer_before=item.answer, answer_after=answer, note=note or "", created_at=now))
        item.status, item.question, item.answer = status, question, answer
        item.reviewer, item.reviewed_at = reviewer, now
        if note is not None:
            item.note = note

    # -- reading ----------------------------------------------------------------------------------

    def get(self, pair_id: str) -> dict[str, Any]:
        with self._session() as session:
            return _item_dict(self._item(session, pair_id))

    def history(self, pair_id: str) -> list[dict[str, Any]]:
        with self._session() as session:
            self._item(session, pair_id)
            events = session.scalars(select(ReviewEvent).where(ReviewEvent.pair_id == pair_id)
                                     .order_by(ReviewEvent.id))
            return [_event_dict(e) for e in events]

    def items(self, status: str | None = None, topic: str | None = None, generator: str | None = None,
              limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        self._check_status(status)
        if not isinstance(limit, int) or limit < 1:
            raise ReviewError(f"limit must be a positive integer, got {limit!r}")
        if not isinstance(offset, int) or offset < 0:
            raise ReviewError(f"offset must be a non-negative integer, got {offset!r}")
        with self._session() as session:
            stmt = self._filtered(select(ReviewItem), status, topic, generator)
            rows = session.scalars(stmt.order_by(*self._order()).limit(limit).offset(offset))
            return [_item_dict(i) for i in rows]

    def count(self, status: str | None = None, topic: str | None = None, generator: str | None = None) -> int:
        self._check_status(status)
        with self._session() as session:
            stmt = self._filtered(select(func.count()).select_from(ReviewItem), status, topic, generator)
            return int(session.scalar(stmt) or 0)

    def next_item(self, status: str | None = "pending", topic: str | None = None,
                  after: str | None = None) -> dict[str, Any] | None:
        """The first item (matching the filters) after ``after`` in review order, wrapping around at the end."""
        self._check_status(status)
        with self._session() as session:
            stmt = self._filtered(select(ReviewItem), status, topic, None).order_by(*self._order()).limit(1)
            if after:
                current = session.get(ReviewItem, after)
                if current is not None:
                    item = session.scalar(stmt.where(self._after(current)))
                    if item is not None:
                        return _item_dict(item)
            item = session.scalar(stmt)
            return _item_dict(item) if item is not None else None

    def next_pending(self, topic: str | None = None, after: str | None = None) -> dict[str, Any] | None:
        """The next pending item: ones the quality filter accepted first, auto-rejected ones last."""
        return self.next_item("pending", topic, after)

    def topics(self) -> list[str]:
        with self._session() as session:
            return [t for t in session.scalars(select(ReviewItem.topic).distinct().order_by(ReviewItem.topic))]

    def stats(self) -> dict[str, Any]:
        """Counts: total, by status, by generator (each split by status), by topic."""
        with self._session() as session:
            rows = session.execute(select(ReviewItem.generator, ReviewItem.topic, ReviewItem.status, func.count())
                                   .group_by(ReviewItem.generator, ReviewItem.topic, ReviewItem.status)).all()
            n_events = int(session.scalar(select(func.count()).select_from(ReviewEvent)) or 0)
        by_status = {s: 0 for s in STATUSES}
        by_generator: dict[str, dict[str, int]] = {}
        by_topic: dict[str, dict[str, int]] = {}
        for generator, topic, status, n in rows:
            by_status[status] = by_status.get(status, 0) + n
            for table, key in ((by_generator, generator), (by_topic, topic)):
                counts = table.setdefault(key, {s: 0 for s in STATUSES})
                counts[status] = counts.get(status, 0) + n
        return {"total": sum(by_status.values()), "by_status": by_status,
                "by_generator": dict(sorted(by_generator.items())), "by_topic": dict(sorted(by_topic.items())),
                "events": n_events}

    def decisions(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """Every reviewed item (approved, edited, rejected) with its current text and source fields."""
        with self._session() as session:
            stmt = select(ReviewItem).where(ReviewItem.status.in_(REVIEWED))
            if dataset is not None:
                stmt = stmt.where(ReviewItem.dataset == dataset)
            return [_item_dict(i) for i in session.scalars(stmt.order_by(*self._order()))]

    # -- offline review ---------------------------------------------------------------------------

    def export_jsonl(self, path: str | Path, status: str | None = None) -> int:
        """Write one JSON object per item (optionally of one status); return the number written."""
        self._check_status(status)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with self._session() as session, path.open("w", encoding="utf-8") as f:
            stmt = select(ReviewItem)
            if status:
                stmt = stmt.where(ReviewItem.status == status)
            for item in session.scalars(stmt.order_by(*self._order())):
                f.write(json.dumps(_item_dict(item), ensure_ascii=False) + "\n")
                n += 1
        return n

    def import_jsonl(self, path: str | Path, reviewer: str | None = None,
                     user_id: int | None = None) -> dict[str, int]:
        """Apply an offline reviewer's file: every line is checked first, then all are applied or none.

        Each line needs ``pair_id`` and ``status`` (approved, edited, rejected or pending) and may carry
        ``question``, ``answer``, ``reviewer`` and ``note``. The ``reviewer`` argument, when given, is
        recorded for every change with ``user_id`` (it overrides the lines' reviewer, which in an exported
        file names the previous reviewer; ``app dataset review import`` always passes an account). Changed text needs status ``edited``. A line equal to the current state changes
        nothing. Returns {lines, changed, unchanged}.
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ReviewError(f"cannot read {path}: {exc}") from None
        default_reviewer = reviewer.strip() if isinstance(reviewer, str) and reviewer.strip() else None
        counts = {"lines": 0, "changed": 0, "unchanged": 0}
        with write_session(self._session) as session:
            plan: list[tuple[ReviewItem, str, str, str, str, str | None]] = []
            first_line: dict[str, int] = {}
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue

                def bad(reason: str, n: int = n) -> ReviewError:
                    return ReviewError(f"bad JSONL line {n} in {path.name}: {reason}")

                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise bad(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(rec, dict):
                    raise bad("not a JSON object")
                pid, status = rec.get("pair_id"), rec.get("status")
                if not isinstance(pid, str) or not pid:
                    raise bad("missing pair_id")
                if pid in first_line:
                    raise bad(f"pair_id {pid} already appears on line {first_line[pid]}")
                first_line[pid] = n
                if status is None:
                    raise bad("missing status")
                if status not in STATUSES:
                    raise bad(f"bad status {status!r}; expected one of {', '.join(STATUSES)}")
                item = session.get(ReviewItem, pid)
                if item is None:
                    raise bad(f"unknown pair_id {pid!r}")
                new = {}
                for key in ("question", "answer"):
                    value = rec.get(key)
                    if value is None:
                        new[key] = getattr(item, key)
                    elif not isinstance(value, str) or not value.strip():
                        raise bad(f"empty {key}")
                    else:
                        new[key] = value.strip()
                note = rec.get("note")
                if note is not None and not isinstance(note, str):
                    raise bad("note must be a string")
                note = note.strip() if note is not None else None
                text_changed = (new["question"], new["answer"]) != (item.question, item.answer)
                if text_changed and status != "edited":
                    raise bad(f"question/answer changed but status is {status!r}; set status 'edited' to "
                              "save an edit")
                if status == "edited" and (new["question"], new["answer"]) == (item.orig_question,
                                                                                item.orig_answer):
                    raise bad("status 'edited' but the question and answer equal the generated ones")
                if not text_changed and status == item.status and (note is None or note == item.note):
                    counts["unchanged"] += 1
                    counts["lines"] += 1
                    continue
                line_reviewer = rec.get("reviewer")
                if line_reviewer is not None and not isinstance(line_reviewer, str):
                    raise bad("reviewer must be a string")
                who = default_reviewer or (line_reviewer.strip() if line_reviewer else "")
                if not who:
                    raise bad("missing reviewer (give it on the line or as the reviewer argument)")
                plan.append((item, who, status, new["question"], new["answer"], note))
                counts["lines"] += 1
            for item, who, status, question, answer, note in plan:
                self._apply(session, item, who, "import", status, question, answer, note,
                            user_id if default_reviewer else None)
                counts["changed"] += 1
        return counts

