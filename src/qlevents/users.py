"""Dashboard users: an email, an argon2id password hash, and a role.

A user is an ``operator`` (every account, the account book, other users) or a ``member`` of
one account (named by the account's stable id, so a key rotation changes nothing). Users live
in a ``users`` table beside ``accounts`` in ``<data-dir>/accounts.sqlite3``, so the CLI and
every server worker share them; dashboard sessions live there too (``sessions``), written
only at sign-in and sign-out. On a NATS cluster they live in the account book's bucket
instead (users_jetstream.py), so every node shares them; both stores implement
:class:`UserStoreLike`, which is all the dashboard and ``qlevents users`` use
(``store/factory.py:build_user_store`` picks one).
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from qlevents._exceptions import QleventsError
from qlevents.accounts import connect_book

OPERATOR: Final = "operator"
MEMBER: Final = "member"
Role = Literal["operator", "member"]
MIN_PASSWORD: Final = 10
MAX_PASSWORD: Final = 1024
#: How long a dashboard session lasts after sign-in.
SESSION_SECONDS: Final = 12 * 3600.0

#: Set to 1 by this project's test suite: new passwords are hashed with 1 MiB and t=1, about
#: 100 times cheaper. Never in production; ``qlevents serve`` warns when it is set.
FAST_HASHES_VARIABLE: Final = "QLEVENTS_TEST_FAST_PASSWORD_HASHES"
#: argon2-cffi's defaults are argon2id with RFC 9106's low-memory profile (64 MiB, t=3). A
#: hash carries its parameters, so either hasher verifies the other's hashes.
FAST_HASHES: Final = os.environ.get(FAST_HASHES_VARIABLE) == "1"
_hasher: Final = (
    PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    if FAST_HASHES
    else PasswordHasher()
)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the email is unknown, so the answer takes as long either way."""
    return _hasher.hash(secrets.token_urlsafe(16))


class UserError(QleventsError):
    """A user operation was refused (unknown email, weak password, bad role)."""


@dataclass(frozen=True, slots=True)
class User:
    email: str
    role: Role
    account_id: str | None
    disabled: bool
    created_at: float

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR

    def may_see(self, account_id: str) -> bool:
        """Whether this user may see the account's pages and data."""
        return not self.disabled and (self.is_operator or self.account_id == account_id)


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str
    expires_at: float


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or len(email) > 254 or not email.isprintable():
        raise UserError(f"{email!r} is not an email address")
    return email


def check_password(password: str) -> str:
    if not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
        raise UserError(f"a password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def token_hash(token: str) -> str:
    """What a store keeps of a session's token (the cookie's value is never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(role: str, account_id: str | None) -> None:
    if role not in (OPERATOR, MEMBER):
        raise UserError(f"a role is 'operator' or 'member'; got {role!r}")
    if (role == MEMBER) != (account_id is not None):
        raise UserError("a member belongs to one account; an operator to none")


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def password_matches(stored: str | None, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` hashes (None: no such user, verified
    against a dummy hash all the same, so the answer takes as long either way)."""
    try:
        _hasher.verify(stored or _dummy_hash(), password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return False
    return stored is not None


def new_session_tokens() -> tuple[str, str]:
    """A session's cookie token and its CSRF token."""
    return secrets.token_urlsafe(32), secrets.token_urlsafe(32)


class UserStoreLike(Protocol):
    """What the dashboard and ``qlevents users`` use of the users and sessions:
    :class:`UserStore` (SQLite, one machine) and
    :class:`~qlevents.users_jetstream.JetStreamUserStore` (a NATS cluster's bucket)."""

    def close(self) -> None: ...
    def add(self, email: str, password: str, role: Role, account_id: str | None = None) -> User: ...
    def get(self, email: str) -> User: ...
    def all(self) -> list[User]: ...
    def disable(self, email: str) -> User: ...
    def enable(self, email: str) -> User: ...
    def set_password(self, email: str, password: str) -> User: ...
    def authenticate(self, email: str, password: str) -> User | None: ...
    def open_session(self, user: User, seconds: float = SESSION_SECONDS) -> tuple[str, Session]: ...
    def session(self, token: str) -> Session | None: ...
    def close_session(self, token: str) -> None: ...


class UserStore:
    """The users and sessions of one data directory (thread-safe: one call at a time)."""

    def __init__(self, data_dir: str | Path) -> None:
        # The users live in the account book's file (its migrations make their tables).
        self._conn = connect_book(Path(data_dir))
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # --- users ---------------------------------------------------------------------------

    def add(self, email: str, password: str, role: Role, account_id: str | None = None) -> User:
        email = normalize_email(email)
        check_role(role, account_id)
        password_hash = hash_password(password)
        try:
            self._run(
                "INSERT INTO users (email, password_hash, role, account_id, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (email, password_hash, role, account_id, time.time()),
            )
        except sqlite3.IntegrityError:
            raise UserError(f"a user {email!r} exists already") from None
        return self.get(email)

    def get(self, email: str) -> User:
        rows = self._run(
            "SELECT email, role, account_id, disabled, created_at FROM users WHERE email = ?",
            (email.strip().lower(),),
        )
        if not rows:
            raise UserError(f"no user has the email {email!r}")
        email, role, account_id, disabled, created_at = rows[0]
        return User(email, role, account_id, bool(disabled), created_at)

    def all(self) -> list[User]:
        rows = self._run(
            "SELECT email, role, account_id, disabled, created_at FROM users ORDER BY email"
        )
        return [User(e, r, a, bool(d), c) for e, r, a, d, c in rows]

    def disable(self, email: str) -> User:
        """The user can no longer sign in, and every session of theirs ends."""
        user = self.get(email)
        self._run("UPDATE users SET disabled = 1 WHERE email = ?", (user.email,))
        self._run("DELETE FROM sessions WHERE email = ?", (user.email,))
        return self.get(user.email)

    def enable(self, email: str) -> User:
        user = self.get(email)
        self._run("UPDATE users SET disabled = 0 WHERE email = ?", (user.email,))
        return self.get(user.email)

    def set_password(self, email: str, password: str) -> User:
        """A new password; every session of the user ends."""
        user = self.get(email)
        password_hash = hash_password(password)
        self._run("UPDATE users SET password_hash = ? WHERE email = ?", (password_hash, user.email))
        self._run("DELETE FROM sessions WHERE email = ?", (user.email,))
        return user

    def authenticate(self, email: str, password: str) -> User | None:
        """The user, if the email and password are right and the user is enabled."""
        rows = self._run(
            "SELECT password_hash FROM users WHERE email = ?", (email.strip().lower(),)
        )
        if not password_matches(rows[0][0] if rows else None, password):
            return None
        user = self.get(email)
        return None if user.disabled else user

    # --- sessions --------------------------------------------------------------------------

    def open_session(self, user: User, seconds: float = SESSION_SECONDS) -> tuple[str, Session]:
        """A new session: the token for the cookie (never stored), and the session."""
        token, csrf = new_session_tokens()
        expires_at = time.time() + seconds
        self._run("DELETE FROM sessions WHERE expires_at < ?", (time.time(),))
        self._run(
            "INSERT INTO sessions (token_hash, email, csrf, expires_at) VALUES (?, ?, ?, ?)",
            (token_hash(token), user.email, csrf, expires_at),
        )
        return token, Session(user, csrf, expires_at)

    def session(self, token: str) -> Session | None:
        """The live session of a cookie's token, with its user as now (None if disabled)."""
        rows = self._run(
            "SELECT u.email, u.role, u.account_id, u.disabled, u.created_at, s.csrf, s.expires_at"
            " FROM sessions s JOIN users u ON u.email = s.email WHERE s.token_hash = ?",
            (token_hash(token),),
        )
        if not rows:
            return None
        email, role, account_id, disabled, created_at, csrf, expires_at = rows[0]
        if disabled or expires_at <= time.time():
            return None
        return Session(User(email, role, account_id, False, created_at), csrf, expires_at)

    def close_session(self, token: str) -> None:
        self._run("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))
