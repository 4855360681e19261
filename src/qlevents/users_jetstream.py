"""The dashboard's users and sessions on a cluster: entries of the account book's bucket.

    user.<email as unpadded base64url>   a user: email, argon2id hash, role, account, disabled
    session.<SHA-256 of the token>       a session: its user's email, CSRF token, expiry

Every node's :class:`~qlevents.accounts_jetstream.JetStreamAccountBook` watches the bucket,
so a user added on any node (its dashboard, ``qlevents users … --store nats://…``) signs in
on every node, and a session opened on one is valid on all. A session a node has not seen
yet (its watch is a few ms behind) is read from the cluster before it is refused; a
signed-out or disabled one ends on every node as soon as its watch brings the deletion.
"""

from __future__ import annotations

import base64
import time
from typing import Final

import msgspec

from qlevents.accounts_jetstream import EntryConflictError, JetStreamAccountBook
from qlevents.users import (
    SESSION_SECONDS,
    Role,
    Session,
    User,
    UserError,
    check_role,
    hash_password,
    new_session_tokens,
    normalize_email,
    password_matches,
    token_hash,
)

USER: Final = "user"
SESSION: Final = "session"


class _StoredUser(msgspec.Struct, frozen=True):
    email: str
    password_hash: str
    role: Role
    account_id: str | None
    disabled: bool
    created_at: float

    def user(self) -> User:
        return User(self.email, self.role, self.account_id, self.disabled, self.created_at)


class _StoredSession(msgspec.Struct, frozen=True):
    email: str
    csrf: str
    expires_at: float


_read_user: Final = msgspec.json.Decoder(_StoredUser).decode
_read_session: Final = msgspec.json.Decoder(_StoredSession).decode
_encode: Final = msgspec.json.Encoder().encode


def user_key(email: str) -> str:
    """An email as a KV key token (``@`` and ``+`` may not be in a key)."""
    return base64.urlsafe_b64encode(email.encode()).rstrip(b"=").decode("ascii")


class JetStreamUserStore:
    """The users and sessions in ``book``'s bucket. ``owns_book``: ``close`` closes it
    (the CLI's; the server's book is its directory's)."""

    def __init__(self, book: JetStreamAccountBook, *, owns_book: bool = False) -> None:
        self.book = book
        self._owns_book = owns_book

    def close(self) -> None:
        if self._owns_book:
            self.book.close()

    def _stored(self, email: str) -> tuple[_StoredUser, int]:
        found = self.book.entry(USER, user_key(email.strip().lower()))
        if found is None:
            raise UserError(f"no user has the email {email!r}")
        return _read_user(found[0]), found[1]

    def _change(self, email: str, **changes: object) -> User:
        """Write the user with ``changes`` over the revision read (again on a conflict)."""
        for _ in range(5):
            stored, revision = self._stored(email)
            changed = msgspec.structs.replace(stored, **changes)
            try:
                self.book.put_entry(USER, user_key(stored.email), _encode(changed), revision)
            except EntryConflictError:
                time.sleep(0.05)  # the watch brings the other change
                continue
            return changed.user()
        raise UserError(f"the user {email!r} changed under every attempt; try again")

    def _end_sessions(self, email: str) -> None:
        for name, value in self.book.entries(SESSION).items():
            if _read_session(value).email == email:
                self.book.delete_entry(SESSION, name)

    # --- users ---------------------------------------------------------------------------

    def add(self, email: str, password: str, role: Role, account_id: str | None = None) -> User:
        email = normalize_email(email)
        check_role(role, account_id)
        stored = _StoredUser(email, hash_password(password), role, account_id, False, time.time())
        try:
            self.book.put_entry(USER, user_key(email), _encode(stored), 0)
        except EntryConflictError:
            raise UserError(f"a user {email!r} exists already") from None
        return stored.user()

    def get(self, email: str) -> User:
        return self._stored(email)[0].user()

    def all(self) -> list[User]:
        users = [_read_user(value).user() for value in self.book.entries(USER).values()]
        return sorted(users, key=lambda u: u.email)

    def disable(self, email: str) -> User:
        """The user can no longer sign in, and every session of theirs ends on every node."""
        user = self._change(email, disabled=True)
        self._end_sessions(user.email)
        return user

    def enable(self, email: str) -> User:
        return self._change(email, disabled=False)

    def set_password(self, email: str, password: str) -> User:
        """A new password; every session of the user ends."""
        user = self._change(email, password_hash=hash_password(password))
        self._end_sessions(user.email)
        return user

    def authenticate(self, email: str, password: str) -> User | None:
        try:
            stored: _StoredUser | None = self._stored(email)[0]
        except UserError:
            stored = None
        if not password_matches(stored.password_hash if stored else None, password):
            return None
        assert stored is not None
        return None if stored.disabled else stored.user()

    # --- sessions --------------------------------------------------------------------------

    def open_session(self, user: User, seconds: float = SESSION_SECONDS) -> tuple[str, Session]:
        token, csrf = new_session_tokens()
        now = time.time()
        for name, value in self.book.entries(SESSION).items():
            if _read_session(value).expires_at < now:
                self.book.delete_entry(SESSION, name)
        stored = _StoredSession(user.email, csrf, now + seconds)
        self.book.put_entry(SESSION, token_hash(token), _encode(stored))
        return token, Session(user, csrf, stored.expires_at)

    def session(self, token: str) -> Session | None:
        """The live session of a cookie's token, with its user as now (None if disabled)."""
        name = token_hash(token)
        found = self.book.entry(SESSION, name)
        value = found[0] if found is not None else self.book.fetch_entry(SESSION, name)
        if value is None:
            return None
        stored = _read_session(value)
        if stored.expires_at <= time.time():
            return None
        try:
            user = self.get(stored.email)
        except UserError:
            return None
        if user.disabled:
            return None
        return Session(user, stored.csrf, stored.expires_at)

    def close_session(self, token: str) -> None:
        self.book.delete_entry(SESSION, token_hash(token))
