"""Opening the databases people write to (review decisions, human ratings): SQLite by default.

Any SQLAlchemy URL works; for SQLite the folder is created, writers wait for each other instead
of failing at once (the web servers answer from thread pools), foreign keys are enforced, and an
in-memory database is one database shared by every thread.

Timestamps are stored in UTC: :func:`utc_now` makes them, :func:`utc_column` declares a column
that defaults to it, and :func:`as_utc` / :func:`iso` read them back (SQLite drops the zone).
Each subsystem declares its own ``DeclarativeBase`` subclass, so its tables live in its own
metadata (and database).

This module imports nothing from the app: every stage may use it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import MappedColumn, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


def utc_column() -> MappedColumn[Any]:
    """A timezone-aware timestamp column that defaults to :func:`utc_now` (``created_at`` and the like)."""
    return mapped_column(DateTime(timezone=True), default=utc_now)


def as_utc(value: datetime) -> datetime:
    """``value`` with its zone; a naive one (SQLite drops the zone) is UTC, as everything is stored."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 text of a stored timestamp (UTC when it has no zone), None for None."""
    return None if value is None else as_utc(value).isoformat()


def open_database(url: str, metadata: MetaData, error: type[Exception], what: str) -> tuple[Engine, sessionmaker[Session]]:
    """(engine, session factory) of ``url`` with ``metadata``'s tables created when missing.

    Problems raise ``error`` with a message naming ``what`` database and the cause.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise error(f"invalid {what} database URL {url!r}: {exc}") from None
    connect_args: dict[str, Any] = {}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise error(f"cannot create the folder of {what} database {url!r}: {exc}") from None
        connect_args = {"check_same_thread": False, "timeout": 30}
    try:
        if sqlite and (not parsed.database or parsed.database == ":memory:"):
            engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool)
        else:
            engine = create_engine(url, connect_args=connect_args)
        if sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        metadata.create_all(engine)
    except (ImportError, NoSuchModuleError, SQLAlchemyError) as exc:
        raise error(f"cannot open {what} database {url!r}: {exc}") from None
    return engine, sessionmaker(engine, expire_on_commit=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
