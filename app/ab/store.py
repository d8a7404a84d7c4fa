"""The experiment database: every request an arm answered (or a shadow call made), feedback tied
to a request id, and each change of the split. SQLite by default, any SQLAlchemy URL.

The write path loses nothing when the service restarts or the database is briefly locked:

1. :meth:`EventWriter.record` appends the event to a spool file (one JSON line, flushed to the
   operating system) before it returns; the request's path never waits for the database.
2. A background thread inserts spooled events in batches. A locked or unreachable database is
   retried with back-off; nothing is dropped while it waits.
3. Inserts ignore events whose id is already stored, so replaying a spool is harmless. A spool file
   is deleted only after every event in it is committed. A new writer (after a restart or a crash)
   first replays every spool file it finds in the folder, its own and those of dead processes.

A process killed between the spool append and the return loses at most that one event, whose
request never got a response either.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint, func, insert, select,
                        update)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db import iso, open_database, utc_column, utc_now, write_session
from app.errors import AppError

log = logging.getLogger(__name__)


class AbError(AppError, RuntimeError):
    """The experiment database could not be read or written; the message says why."""


class FeedbackError(AbError, ValueError):
    """Feedback that cannot be stored: ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Base(DeclarativeBase):
    pass


class RequestEvent(Base):
    """One answer of one arm: a served response, or a shadow call (``role='shadow'``, ``primary_id`` set)."""

    __tablename__ = "ab_requests"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment: Mapped[str] = mapped_column(String(200), index=True)
    unit: Mapped[str] = mapped_column(String(200))
    arm: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(10))  # served | shadow | outside (not in the experiment)
    primary_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = utc_column()
    status: Mapped[str] = mapped_column(String(10))  # ok | error | shed | timeout
    error: Mapped[str] = mapped_column(Text, default="")
    question: Mapped[str] = mapped_column(Text, default="")
    context: Mapped[str | None] = mapped_column(Text, nullable=True)
    reference: Mapped[str | None] = mapped_column(Text, nullable=True)
    answer: Mapped[str] = mapped_column(Text, default="")
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    e2e_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Quality scores, filled by the scorer (app.ab.quality) after the fact, never on the request's path.
    scored: Mapped[bool] = mapped_column(Boolean, default=False)
    answer_words: Mapped[int | None] = mapped_column(Integer, nullable=True)
    empty_or_refusal: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    groundedness: Mapped[float | None] = mapped_column(Float, nullable=True)
    domain_correct: Mapped[float | None] = mapped_column(Float, nullable=True)
    token_f1: Mapped[float | None] = mapped_column(Float, nullable=True)
    similarity_to_primary: Mapped[float | None] = mapped_column(Float, nullable=True)


class Feedback(Base):
    """A user's verdict on one served response: thumbs up/down, a 1-5 rating, or both (one per request)."""

    __tablename__ = "ab_feedback"
    __table_args__ = (UniqueConstraint("request_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("ab_requests.id"))
    experiment: Mapped[str] = mapped_column(String(200), index=True)
    thumbs_up: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    account: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = utc_column()


class SplitChange(Base):
    """The split as set at a time: the experiment's start, each live change, the promotion of a winner."""

    __tablename__ = "ab_splits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment: Mapped[str] = mapped_column(String(200), index=True)
    weights: Mapped[str] = mapped_column(Text)  # JSON {arm: weight}
    shadow_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: unchanged
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = utc_column()


REQUEST_FIELDS = {c.name for c in RequestEvent.__table__.columns}


def _as_dict(event: RequestEvent) -> dict[str, Any]:
    return {c: getattr(event, c) for c in REQUEST_FIELDS}


def database_url(db: str | None, home: Path) -> str:
    """The experiment database: ``ab.db`` when set, else SQLite at ``<home>/ab.db``."""
    return db or f"sqlite:///{Path(home).expanduser() / 'ab.db'}"


def spool_dir(home: Path, experiment: str) -> Path:
    """Where the ingress's event writer spools the experiment's events (a local disk of the ingress)."""
    return Path(home).expanduser() / "ab-spool" / experiment


def open_store(url: str):
    return open_database(url, Base.metadata, AbError, "A/B experiment", migrations="ab")


class EventWriter:
    """Durable, non-blocking recording of request events (see the module docstring).

    ``spool_dir`` must be on a local disk of the process's machine; each writer appends to its own
    file there and replays every file it finds when it starts.
    """

    def __init__(self, url: str, spool_dir: Path, batch: int = 200, interval_s: float = 0.2,
                 max_backoff_s: float = 5.0, rotate_every: int = 5000):
        self.engine, self._session = open_store(url)
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.batch, self.interval_s, self.max_backoff_s = batch, interval_s, max_backoff_s
        self.rotate_every = rotate_every
        self._lock = threading.Lock()
        # Spooled, not yet committed (this process), each with the spool file that holds it.
        self._pending: list[tuple[dict[str, Any], Path]] = []
        self._uncommitted: dict[Path, int] = {}  # spool file -> its events not yet committed
        self._written = 0  # events in the current spool file
        self._spool = self._new_spool()
        self.stats = {"recorded": 0, "committed": 0, "replayed": 0, "retries": 0, "last_error": ""}
        self._stop = threading.Event()
        self._idle = threading.Event()
        self.replay()
        self._thread = threading.Thread(target=self._run, name="ab-event-writer", daemon=True)
        self._thread.start()

    # -- the request's path ----------------------------------------------------------------------
    def record(self, event: dict[str, Any]) -> str:
        """Spool one event (a dict of :class:`RequestEvent` fields; ``id`` made when missing)."""
        unknown = set(event) - REQUEST_FIELDS
        if unknown:
            raise ValueError(f"unknown event fields {sorted(unknown)}")
        event = {**event, "id": event.get("id") or uuid.uuid4().hex}
        event.setdefault("created_at", iso(utc_now()))
        line = json.dumps(event, default=str) + "\n"
        with self._lock:
            if self._written >= self.rotate_every:  # a long experiment does not grow one file forever
                self._spool.close()
                self._drop_committed_files()
                self._spool = self._new_spool()
            self._spool.write(line)
            self._spool.flush()
            path = Path(self._spool.name)
            self._written += 1
            self._uncommitted[path] = self._uncommitted.get(path, 0) + 1
            self._pending.append((event, path))
            self.stats["recorded"] += 1
            self._idle.clear()
        return event["id"]

    def pending_ids(self) -> set[str]:
        with self._lock:
            return {e["id"] for e, _ in self._pending}

    # -- the background path ---------------------------------------------------------------------
    def _new_spool(self):
        path = self.spool_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._written = 0
        self._uncommitted.setdefault(path, 0)
        return path.open("a", encoding="utf-8")

    def _drop_committed_files(self) -> None:
        """Delete the spool files (other than the open one) whose events are all committed."""
        current = Path(self._spool.name) if not self._spool.closed else None
        for path, left in list(self._uncommitted.items()):
            if left == 0 and path != current:
                path.unlink(missing_ok=True)
                del self._uncommitted[path]

    def _insert(self, events: list[dict[str, Any]]) -> None:
        rows = [_row(e) for e in events]
        with write_session(self._session) as s:
            ids = [r["id"] for r in rows]
            have = set(s.scalars(select(RequestEvent.id).where(RequestEvent.id.in_(ids))))
            fresh = [r for r in rows if r["id"] not in have]
            if fresh:
                s.execute(insert(RequestEvent), fresh)

    def _flush_once(self) -> bool:
        """Commit what is pending; True when nothing is left. A spool file is rotated once committed."""
        with self._lock:
            batch = self._pending[: self.batch]
            if not batch:
                self._idle.set()
                return True
        self._insert([e for e, _ in batch])  # raises AbError while the database refuses
        with self._lock:
            del self._pending[: len(batch)]
            for _, path in batch:
                self._uncommitted[path] -= 1
            self.stats["committed"] += len(batch)
            self._drop_committed_files()
            if not self._pending:
                self._idle.set()
                return True
        return False

    def _run(self) -> None:
        backoff = self.interval_s
        while not self._stop.is_set():
            try:
                done = self._flush_once()
                backoff = self.interval_s
                if done:
                    self._stop.wait(self.interval_s)
            except (AbError, OperationalError) as exc:  # locked, gone: keep the events, try again
                self.stats["retries"] += 1
                self.stats["last_error"] = str(exc)[:300]
                log.warning("A/B events not stored yet (%s); retrying in %.1f s", str(exc)[:200], backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every recorded event is committed (False: still pending after ``timeout_s``)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if not self._pending:
                    return True
            self._idle.wait(min(0.1, max(0.0, end - time.monotonic())))
        return False

    def close(self, timeout_s: float = 30.0) -> bool:
        """Commit what is pending (up to ``timeout_s``), stop the thread. What could not be committed
        stays in the spool for the next writer."""
        ok = self.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            self._spool.close()
            self._drop_committed_files()  # the open one included, now that it is closed
        self.engine.dispose()
        return ok

    def replay(self) -> int:
        """Store the events of every spool file in the folder (left by a restart or a crash), then
        delete the files. Events already stored are skipped; a torn last line (a crash mid-write) is ignored."""
        total = 0
        for path in sorted(self.spool_dir.glob("*.jsonl")):
            if path in self._uncommitted:  # this writer's own
                continue
            if _owner_alive(path):  # another live writer's (an ingress replica beside this one)
                continue
            events = list(_read_spool(path))
            for i in range(0, len(events), self.batch):
                self._insert(events[i:i + self.batch])
            total += len(events)
            path.unlink(missing_ok=True)
        self.stats["replayed"] += total
        return total


def _owner_alive(path: Path) -> bool:
    """Whether the process that named a spool file ``<pid>-<id>.jsonl`` still runs (not this one)."""
    pid = path.name.split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_spool(path: Path) -> Iterable[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash: its request got no response either
        if isinstance(event, dict) and event.get("id"):
            yield {k: v for k, v in event.items() if k in REQUEST_FIELDS}


def _row(event: dict[str, Any]) -> dict[str, Any]:
    row = dict(event)
    if isinstance(row.get("created_at"), str):
        row["created_at"] = datetime.fromisoformat(row["created_at"])
    row.setdefault("error", "")
    row.setdefault("question", "")
    row.setdefault("answer", "")
    row.setdefault("scored", False)
    return row


class ExperimentStore:
    """Reads, feedback and split changes (the web routes and the report use it)."""

    def __init__(self, url: str, pending: EventWriter | None = None):
        self.engine, self._session = open_store(url)
        self.pending = pending

    def close(self) -> None:
        self.engine.dispose()

    def add_feedback(self, request_id: str, account: str, thumbs_up: bool | None = None, rating: int | None = None,
                     comment: str = "", wait_s: float = 3.0) -> dict[str, Any]:
        """Store feedback on a served response. FeedbackError(status) for an unknown request id (404), a
        shadow call (400: users never saw it), no verdict or a rating outside 1-5 (422), feedback already
        given (409). A request id still in a writer's spool is waited for up to ``wait_s``."""
        if thumbs_up is None and rating is None:
            raise FeedbackError("feedback needs thumbs_up (true/false) or rating (1-5)", 422)
        if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5):
            raise FeedbackError(f"rating must be an integer from 1 to 5, got {rating!r}", 422)
        if not isinstance(request_id, str) or not request_id or len(request_id) > 64:
            raise FeedbackError("request_id must be the X-Experiment-Request-Id header of a response", 422)
        if len(comment) > 2000:
            raise FeedbackError("comment is longer than 2000 characters", 422)
        end = time.monotonic() + wait_s
        while True:
            with self._session() as s:
                req = s.get(RequestEvent, request_id)
            if req is not None or time.monotonic() >= end:
                break
            if self.pending is not None and request_id in self.pending.pending_ids():
                self.pending.flush(max(0.1, end - time.monotonic()))
            time.sleep(0.1)
        if req is None:
            raise FeedbackError(f"no response with request id {request_id!r} in this experiment's database", 404)
        if req.role != "served":
            raise FeedbackError(f"request {request_id} was a {req.role} call, not a response a user saw", 400)
        try:
            with write_session(self._session) as s:
                fb = Feedback(request_id=request_id, experiment=req.experiment, thumbs_up=thumbs_up, rating=rating,
                              comment=comment, account=account)
                s.add(fb)
                s.flush()
                return {"id": fb.id, "request_id": request_id, "experiment": req.experiment, "arm": req.arm}
        except IntegrityError:
            raise FeedbackError(f"feedback for request {request_id} was already given", 409) from None

    def record_split(self, experiment: str, weights: dict[str, float], reason: str,
                     shadow_fraction: float | None = None) -> None:
        with write_session(self._session) as s:
            s.add(SplitChange(experiment=experiment, weights=json.dumps(weights), reason=reason,
                              shadow_fraction=shadow_fraction))

    def splits(self, experiment: str) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.scalars(select(SplitChange).where(SplitChange.experiment == experiment).order_by(SplitChange.id))
            return [{"weights": json.loads(r.weights), "shadow_fraction": r.shadow_fraction, "reason": r.reason,
                     "at": iso(r.created_at)} for r in rows]

    def latest_split(self, experiment: str) -> dict[str, Any] | None:
        """The split set last for ``experiment`` (None before any): what every ingress replica applies."""
        with self._session() as s:
            r = s.scalars(select(SplitChange).where(SplitChange.experiment == experiment)
                          .order_by(SplitChange.id.desc()).limit(1)).first()
            return None if r is None else {"weights": json.loads(r.weights), "shadow_fraction": r.shadow_fraction,
                                           "reason": r.reason, "at": iso(r.created_at)}

    def requests(self, experiment: str, role: str | None = None) -> list[dict[str, Any]]:
        """Every request event of ``experiment`` with its feedback (thumbs_up, rating), oldest first."""
        with self._session() as s:
            q = (select(RequestEvent, Feedback.thumbs_up, Feedback.rating)
                 .outerjoin(Feedback, Feedback.request_id == RequestEvent.id)
                 .where(RequestEvent.experiment == experiment).order_by(RequestEvent.created_at, RequestEvent.id))
            if role:
                q = q.where(RequestEvent.role == role)
            out = []
            for ev, thumbs, rating in s.execute(q):
                row = _as_dict(ev)
                row["created_at"] = iso(ev.created_at)
                row["thumbs_up"], row["rating"] = thumbs, rating
                out.append(row)
            return out

    def unscored(self, experiment: str, limit: int = 500) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.scalars(select(RequestEvent).where(RequestEvent.experiment == experiment,
                                                        RequestEvent.scored.is_(False)).limit(limit))
            return [_as_dict(r) for r in rows]

    def set_scores(self, scores: dict[str, dict[str, Any]]) -> None:
        allowed = {"answer_words", "empty_or_refusal", "groundedness", "domain_correct", "token_f1",
                   "similarity_to_primary"}
        with write_session(self._session) as s:
            for rid, values in scores.items():
                s.execute(update(RequestEvent).where(RequestEvent.id == rid)
                          .values(scored=True, **{k: v for k, v in values.items() if k in allowed}))

    def experiments(self) -> list[str]:
        """Every experiment that recorded a request or a split, by name."""
        with self._session() as s:
            names = set(s.scalars(select(RequestEvent.experiment).distinct()))
            names |= set(s.scalars(select(SplitChange.experiment).distinct()))
            return sorted(names)

    def arms(self, experiment: str) -> dict[str, str]:
        """{arm: model} as recorded by the experiment's served requests."""
        with self._session() as s:
            q = select(RequestEvent.arm, RequestEvent.model).where(RequestEvent.experiment == experiment,
                                                                   RequestEvent.role == "served").distinct()
            return dict(s.execute(q).all())

    def counts(self, experiment: str) -> dict[str, int]:
        with self._session() as s:
            q = (select(RequestEvent.arm, func.count()).where(RequestEvent.experiment == experiment,
                                                             RequestEvent.role == "served")
                 .group_by(RequestEvent.arm))
            return dict(s.execute(q).all())


__all__ = ["database_url", "spool_dir", "AbError", "FeedbackError", "EventWriter", "ExperimentStore", "RequestEvent", "Feedback", "SplitChange",
           "Base", "open_store"]
