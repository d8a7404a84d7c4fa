"""Accounts of the people who write: reviewers of the dataset, annotators of human evaluation, admins.

One ``users`` table (its own database, SQLite at ``<home>/accounts.db`` by default) shared by every web
app that takes writes. Passwords are stored as scrypt hashes (salted, memory-hard; Python's hashlib),
login sessions as SHA-256 hashes of random ids, so a copy of the database reveals neither. Roles:

- ``reviewer``: approves, edits and rejects QA pairs (dataset review);
- ``annotator``: rates answers in human-evaluation studies;
- ``admin``: everything, and manages accounts.

Accounts are managed with ``app users ...``; the web apps log people in against this table and record
the authenticated account with every action. Nothing is deleted: an account is disabled, its sessions
closed, its past actions keep its name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, String, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db import as_utc, iso, open_database, utc_column, utc_now
from app.errors import AppError

ROLES = ("reviewer", "annotator", "analyst", "admin")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024  # scrypt hashes any length; this bounds the work a request can ask for
NAME_CHARS = 100
# scrypt cost N=2^15, r=8, p=1: 0.2 s a login on this project's 2-core machines, 32 MiB. OWASP recommends
# N=2^17 (0.8 s here); the cost is stored in each hash, so raising it later breaks no stored password.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


class AccountError(AppError, ValueError):
    """Bad input to the accounts store; the message names the problem."""


class LoginFailed(AccountError):
    """Unknown name, wrong password or disabled account (one message for all, so names cannot be probed)."""


class Base(DeclarativeBase):
    """The accounts database's tables."""


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_CHARS), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    roles: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = utc_column()
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SessionRow(Base):
    __tablename__ = "user_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = utc_column()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class User:
    """An authenticated account."""

    id: int
    name: str
    roles: tuple[str, ...]

    def can(self, role: str) -> bool:
        """Whether the account may act as ``role`` (admins may act as anyone)."""
        return role in self.roles or "admin" in self.roles


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32,
                            maxmem=128 * SCRYPT_N * SCRYPT_R * 2)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` hash (constant-time comparison)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=n_, r=r_, p=p_,
                             dklen=len(expected), maxmem=128 * n_ * r_ * 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


_DUMMY_HASH = None  # verified against for unknown names, so a login takes as long either way


def _session_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def check_name(name: Any) -> str:
    value = name.strip() if isinstance(name, str) else ""
    if not value or len(value) > NAME_CHARS or any(c.isspace() and c != " " for c in value) \
            or not value.isprintable():
        raise AccountError(f"account name must be 1-{NAME_CHARS} printable characters, got {name!r}")
    return value


def check_password(password: Any) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"password must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"password must be at most {MAX_PASSWORD_CHARS} characters")
    return password


def check_roles(roles: Any) -> tuple[str, ...]:
    items = [roles] if isinstance(roles, str) else list(roles or [])
    out = []
    for r in items:
        for part in str(r).split(","):
            part = part.strip()
            if part and part not in ROLES:
                raise AccountError(f"unknown role {part!r}; roles are {', '.join(ROLES)}")
            if part and part not in out:
                out.append(part)
    if not out:
        raise AccountError(f"an account needs at least one role of {', '.join(ROLES)}")
    return tuple(out)


class AccountStore:
    """Users and login sessions in a SQLAlchemy database (migrated to the newest schema when opened)."""

    def __init__(self, url: str, session_hours: float = 14 * 24) -> None:
        self.url = url
        self.session_hours = session_hours
        self.engine, self._session = open_database(url, Base.metadata, AccountError, "accounts",
                                                   migrations="accounts")

    def close(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _user(row: UserRow) -> User:
        return User(row.id, row.name, tuple(r for r in row.roles.split(",") if r))

    # -- management (app users ...) -----------------------------------------------------------------

    def add(self, name: str, password: str, roles: Any) -> User:
        name, password, role_list = check_name(name), check_password(password), check_roles(roles)
        with self._session.begin() as s:
            if s.scalar(select(UserRow).where(UserRow.name == name)) is not None:
                raise AccountError(f"account {name!r} already exists")
            row = UserRow(name=name, password_hash=hash_password(password), roles=",".join(role_list))
            s.add(row)
            s.flush()
            return self._user(row)

    def _row(self, s, name: str) -> UserRow:
        row = s.scalar(select(UserRow).where(UserRow.name == check_name(name)))
        if row is None:
            raise AccountError(f"no account {name!r}")
        return row

    def set_password(self, name: str, password: str) -> None:
        """A new password; the account's open sessions are closed."""
        password = check_password(password)
        with self._session.begin() as s:
            row = self._row(s, name)
            row.password_hash = hash_password(password)
            s.execute(delete(SessionRow).where(SessionRow.user_id == row.id))

    def set_roles(self, name: str, roles: Any) -> User:
        role_list = check_roles(roles)
        with self._session.begin() as s:
            row = self._row(s, name)
            row.roles = ",".join(role_list)
            return self._user(row)

    def set_disabled(self, name: str, disabled: bool = True) -> None:
        """Disable (or enable again) an account; disabling closes its sessions."""
        with self._session.begin() as s:
            row = self._row(s, name)
            row.disabled_at = utc_now() if disabled else None
            if disabled:
                s.execute(delete(SessionRow).where(SessionRow.user_id == row.id))

    def users(self) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.scalars(select(UserRow).order_by(UserRow.name)).all()
            return [{"name": r.name, "roles": [x for x in r.roles.split(",") if x], "created_at": iso(r.created_at),
                     "disabled_at": iso(r.disabled_at)} for r in rows]

    def get(self, name: str) -> User:
        """The active account ``name``; AccountError when unknown or disabled."""
        with self._session() as s:
            row = self._row(s, name)
            if row.disabled_at is not None:
                raise AccountError(f"account {name!r} is disabled")
            return self._user(row)

    # -- logging in -----------------------------------------------------------------------------------

    def authenticate(self, name: Any, password: Any) -> User:
        """The account when ``name`` and ``password`` match an active one; LoginFailed otherwise."""
        global _DUMMY_HASH
        name = name.strip() if isinstance(name, str) else ""
        password = password if isinstance(password, str) else ""
        with self._session() as s:
            row = s.scalar(select(UserRow).where(UserRow.name == name)) if name else None
        if len(password) > MAX_PASSWORD_CHARS:
            raise LoginFailed("unknown account or wrong password")
        if row is None:
            _DUMMY_HASH = _DUMMY_HASH or hash_password(secrets.token_urlsafe(12))
            verify_password(password, _DUMMY_HASH)
            raise LoginFailed("unknown account or wrong password")
        if not verify_password(password, row.password_hash) or row.disabled_at is not None:
            raise LoginFailed("unknown account or wrong password")
        return self._user(row)

    def open_session(self, user: User) -> str:
        """A new session id for ``user`` (only its hash is stored); valid for ``session_hours``."""
        sid = secrets.token_urlsafe(32)
        now = utc_now()
        with self._session.begin() as s:
            s.add(SessionRow(id_hash=_session_hash(sid), user_id=user.id, created_at=now,
                             expires_at=now + timedelta(hours=self.session_hours)))
        return sid

    def session_user(self, sid: Any) -> User | None:
        """The active account of a session id; None when unknown, expired, or the account is disabled."""
        if not isinstance(sid, str) or not sid or len(sid) > 200:
            return None
        with self._session() as s:
            found = s.get(SessionRow, _session_hash(sid))
            if found is None or as_utc(found.expires_at) <= utc_now():
                return None
            row = s.get(UserRow, found.user_id)
            return None if row is None or row.disabled_at is not None else self._user(row)

    def close_session(self, sid: Any) -> None:
        if not isinstance(sid, str) or not sid:
            return
        with self._session.begin() as s:
            s.execute(delete(SessionRow).where(SessionRow.id_hash == _session_hash(sid)))


__all__ = ["ROLES", "AccountError", "LoginFailed", "User", "AccountStore", "hash_password", "verify_password"]
