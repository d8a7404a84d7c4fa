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

import contextlib
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
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


# How long a SQLite connection waits for another's lock before failing with "database is locked".
SQLITE_TIMEOUT_S = 30.0


def open_database(url: str, metadata: MetaData, error: type[Exception], what: str,
                  migrations: str | None = None, *,
                  timeout_s: float | None = None) -> tuple[Engine, sessionmaker[Session]]:
    """(engine, session factory) of ``url``, its schema brought up to date.

    ``migrations`` names the database's Alembic chain in :mod:`app.migrations` (``accounts``,
    ``review``, ``human``): the database is upgraded to its head, rows kept. Without one,
    ``metadata``'s missing tables are created (``create_all``).

    SQLite waits up to ``timeout_s`` seconds for another connection's lock (None: the URL's
    ``?timeout=`` when it has one, else :data:`SQLITE_TIMEOUT_S`). Write through
    :func:`write_session`. Problems raise ``error`` with a message naming ``what`` database and the cause.
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
        if timeout_s is None:
            raw = parsed.query.get("timeout")
            try:
                timeout_s = SQLITE_TIMEOUT_S if raw is None else float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise error(f"invalid {what} database URL {url!r}: timeout must be a number of seconds, "
                            f"got {raw!r}") from None
        connect_args = {"check_same_thread": False, "timeout": timeout_s}
    try:
        if sqlite and (not parsed.database or parsed.database == ":memory:"):
            engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool)
        else:
            engine = create_engine(url, connect_args=connect_args)
        if sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        if migrations:
            from app.migrations import upgrade  # deferred: Alembic is only needed to open a database

            try:
                upgrade(engine, migrations, set(metadata.tables))
            except SQLAlchemyError:
                raise
            except Exception as exc:  # Alembic's own errors: an unknown revision (a newer app wrote it), ...
                raise error(f"cannot migrate {what} database {url!r} to this version's schema: {exc}") from None
        else:
            metadata.create_all(engine)
    except (ImportError, NoSuchModuleError, SQLAlchemyError) as exc:
        raise error(f"cannot open {what} database {url!r}: {exc}") from None
    # write_session reads these: the lock timeout for its messages, and (one connection shared by
    # every thread: an in-memory database) the lock that serializes writers in this process.
    info = {"sqlite_timeout_s": timeout_s, "what": what, "error": error,
            "write_lock": threading.RLock() if isinstance(engine.pool, StaticPool) else None}
    return engine, sessionmaker(engine, expire_on_commit=False, info=info)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextlib.contextmanager
def write_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one write transaction: committed at the end of the block, or rolled back whole.

    On SQLite the transaction takes the write lock before its first read (``BEGIN IMMEDIATE``), so
    what it reads stays true until it commits: two people acting on one row at once are served one
    after the other, each seeing the other's change (with the driver's deferred transactions both
    read the old row and the second write silently undid the first's checks and history). Waiting
    for another writer happens there, up to the database's timeout.

    A failure of the database itself (locked past the timeout, disk full, read-only, I/O error)
    raises the ``error`` given to :func:`open_database`, naming the database and the cause; nothing
    of the transaction is stored. Other errors raised in the block pass through (after the rollback).
    """
    info = factory.kw.get("info") or {}
    engine: Engine = factory.kw["bind"]
    lock = info.get("write_lock")
    try:
        with lock or contextlib.nullcontext(), factory() as session, session.begin():
            if engine.dialect.name == "sqlite" and lock is None:
                session.execute(text("BEGIN IMMEDIATE"))
            yield session
    except OperationalError as exc:
        error = info.get("error") or RuntimeError
        raise error(write_failure(info.get("what", "the"), engine, exc, info.get("sqlite_timeout_s"))) from None


def write_failure(what: str, engine: Engine, exc: OperationalError, timeout_s: float | None = None) -> str:
    """One line for a write the database refused: which database, the driver's reason, what to do."""
    cause = " ".join(str(exc.orig if exc.orig is not None else exc).split())
    where = engine.url.render_as_string(hide_password=True)
    low = cause.lower()
    if "locked" in low or "busy" in low:
        waited = f" longer than the {timeout_s:g} s timeout" if timeout_s is not None else ""
        hint = f"another connection held its lock{waited}; try again when it is released"
    elif "full" in low:
        hint = "the disk that holds it has no space left; free some and try again"
    elif "readonly" in low or "read-only" in low:
        hint = "the file or its folder is not writable by this user"
    else:
        hint = "check the database server or file"
    return f"cannot write to the {what} database {where}: {cause} ({hint}); nothing was written"
