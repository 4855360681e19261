"""Accounts (client keys) and the endpoints they are homed on.

An account belongs to one installation of the service: the one whose endpoint URL it is
homed on. Its ``endpoint`` is None while it is homed on the installation that owns the data
directory, or the URL of another installation after ``move``. The book lives in
``<data-dir>/accounts.sqlite3`` so the CLI and every server worker share it.

Keys rotate: ``rotate_key`` gives an account a new client key and keeps the old one working
for a grace period (24 h by default); after it the old key is refused with its own error
(``expired_client_key``, see :func:`key_problem`). An account's ``id`` stays the same across
keys and is not secret, so it can appear in URLs where a key never may.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Final, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from qlevents._exceptions import QleventsError
from qlevents.sqlite_schema import Migration, check_readable, migrate, version_of

ACCOUNTS_FILE: Final = "accounts.sqlite3"
KEY_PREFIX: Final = "qlk_"
ACTIVE: Final = "active"
DISABLED: Final = "disabled"
Status = Literal["active", "disabled"]


def _book_0_1_0(conn: sqlite3.Connection) -> None:
    """Version 1: the book of release 0.1.0 (books made before rate limits get the columns)."""
    conn.execute(
        """CREATE TABLE IF NOT EXISTS accounts (
            client_key TEXT PRIMARY KEY,
            name       TEXT NOT NULL,
            status     TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
            endpoint   TEXT,            -- NULL: homed on this installation
            created_at TEXT NOT NULL,
            rate_limit REAL,            -- events per second; NULL: the server's default; 0: none
            burst      REAL             -- bucket size; NULL: the server's default
        )"""
    )
    conn.execute("CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(accounts)")}
    for column in ("rate_limit", "burst"):
        if column not in columns:
            conn.execute(f"ALTER TABLE accounts ADD COLUMN {column} REAL")


def _book_rotation_and_users(conn: sqlite3.Connection) -> None:
    """Version 2: a stable id per account and replaced keys (rotation); the dashboard's users
    and sessions."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(accounts)")}
    if "id" not in columns:
        conn.execute("ALTER TABLE accounts ADD COLUMN id TEXT")
    conn.execute("UPDATE accounts SET id = 'acc_' || lower(hex(randomblob(6))) WHERE id IS NULL")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS accounts_id ON accounts (id)")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS previous_keys (
            client_key  TEXT PRIMARY KEY,
            account_id  TEXT NOT NULL,
            replaced_at REAL NOT NULL,  -- Unix time the account got a new key
            expires_at  REAL NOT NULL   -- Unix time this key stops working
        )"""
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS key_uses"
        " (client_key TEXT PRIMARY KEY, last_used_at REAL NOT NULL)"
    )
    conn.execute(
        """CREATE TABLE IF NOT EXISTS users (
            email         TEXT PRIMARY KEY,   -- lower case
            password_hash TEXT NOT NULL,      -- argon2id, PHC string
            role          TEXT NOT NULL CHECK (role IN ('operator', 'member')),
            account_id    TEXT,               -- the account of a member; NULL for an operator
            disabled      INTEGER NOT NULL DEFAULT 0,
            created_at    REAL NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE IF NOT EXISTS sessions (
            token_hash TEXT PRIMARY KEY,      -- sha256 of the cookie's token: a file holds none
            email      TEXT NOT NULL,
            csrf       TEXT NOT NULL,
            expires_at REAL NOT NULL
        )"""
    )


#: The account book's migrations (see :mod:`qlevents.sqlite_schema`).
MIGRATIONS: Final[tuple[Migration, ...]] = (_book_0_1_0, _book_rotation_and_users)


def connect_book(data_dir: Path) -> sqlite3.Connection:
    """A writing connection to ``<data_dir>/accounts.sqlite3``, created and migrated."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ACCOUNTS_FILE
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        migrate(conn, f"the account book {path}", MIGRATIONS)
    except BaseException:
        conn.close()
        raise
    return conn


#: How long a replaced key keeps working by default.
DEFAULT_GRACE_SECONDS: Final = 24 * 3600.0
#: The longest grace period a rotation may give the old key.
MAX_GRACE_SECONDS: Final = 30 * 24 * 3600.0
_ACCOUNT_COLUMNS: Final = "name, client_key, status, endpoint, created_at, rate_limit, burst, id"


class AccountError(QleventsError):
    """An account operation was refused (unknown key, bad URL, bad name)."""


class AccountNotFoundError(AccountError):
    """No account has the client key an operation named."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    client_key: str
    status: Status
    endpoint: str | None
    """None while homed on this installation; else the URL of the installation it moved to."""
    created_at: str
    rate_limit: float | None = None
    """Events per second this account may send; None: the server's default; 0: unlimited."""
    burst: float | None = None
    """How many events it may send at once above its rate; None: the server's default."""
    id: str = ""
    """Stable across key rotations and not secret: how URLs and users name the account."""

    def home(self, local_endpoint: str) -> str:
        """The URL this account's events must be sent to."""
        return self.endpoint or local_endpoint

    def as_dict(self, local_endpoint: str) -> dict[str, object]:
        """The account as the CLI and the admin API show it."""
        shown: dict[str, object] = asdict(self)
        shown["endpoint"] = self.home(local_endpoint)
        return shown


@dataclass(frozen=True, slots=True)
class PreviousKey:
    """A client key an account had before ``rotate_key``; it works until ``expires_at``."""

    client_key: str
    account_id: str
    replaced_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class KeyProblem:
    """Why an event's client key is refused: the API's error code and message."""

    code: str
    message: str
    endpoint: str | None = None


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def key_problem(
    client_key: str,
    accounts: Mapping[str, Account],
    previous: Mapping[str, PreviousKey],
    local_endpoint: str,
    now: float,
) -> KeyProblem | None:
    """Whether an event with ``client_key`` may be stored on ``local_endpoint``, and if not,
    why: None, or the problem the API answers. ``accounts`` maps every working key (current
    keys, and replaced keys in their grace period) to its account; ``previous`` holds every
    replaced key, expired or not, so that a snapshot older than an expiry still refuses it."""
    replaced = previous.get(client_key)
    if replaced is not None and replaced.expires_at <= now:
        return KeyProblem(
            "expired_client_key",
            f"client_key was replaced by a new key on {_utc(replaced.replaced_at)} and stopped"
            f" working on {_utc(replaced.expires_at)}; copy the account's current key from"
            " Settings > Integration Settings.",
        )
    account = accounts.get(client_key)
    if account is None:
        return KeyProblem(
            "unknown_client_key",
            "client_key is not the key of any account on this endpoint; copy it from"
            " Settings > Integration Settings.",
        )
    if account.status == DISABLED:
        return KeyProblem(
            "disabled_client_key", f"client_key belongs to the disabled account {account.name!r}."
        )
    if account.endpoint is not None and account.endpoint != local_endpoint:
        return KeyProblem(
            "wrong_endpoint",
            f"the account of this client_key is homed on {account.endpoint}, not on"
            f" {local_endpoint}; send its events there.",
            account.endpoint,
        )
    return None


def new_account_id() -> str:
    """A short random account id: unique in practice, and tells nothing about the key."""
    return "acc_" + secrets.token_hex(6)


def new_client_key() -> str:
    """An unguessable client key: 192 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def mask_key(key: str) -> str:
    """A client key as logs may show it: enough to tell keys apart, too little to use one."""
    return key[:8] + "…" if len(key) > 8 else "…"


def normalize_endpoint(url: str) -> str:
    """Check that ``url`` is an absolute http(s) URL and put it in canonical form."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in {"http", "https"} or not parts.netloc:
        raise AccountError(f"an endpoint must be an absolute http(s) URL; got {url!r}")
    path = parts.path.rstrip("/") or "/events"
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A connection that reads the book at ``path`` and writes nothing there: a missing book
    reads as an empty one, an older one as its upgrade (made in memory)."""
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    if path.exists():
        on_disk = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            on_disk.execute("PRAGMA busy_timeout = 5000")
            check_readable(on_disk, f"the account book {path}", len(MIGRATIONS))
            if version_of(on_disk) == len(MIGRATIONS):
                memory.close()
                on_disk.close()
                conn = sqlite3.connect(
                    f"{path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False
                )
                conn.execute("PRAGMA busy_timeout = 5000")
                return conn
            on_disk.backup(memory)
        finally:
            on_disk.close()
    migrate(memory, f"the account book {path}", MIGRATIONS)
    return memory


def new_account(name: str, endpoint: str | None) -> Account:
    """A new active account named ``name`` (checked), with a fresh key and id."""
    name = name.strip()
    if not name or len(name) > 200:
        raise AccountError("an account name must be 1 to 200 characters")
    return Account(
        name=name,
        client_key=new_client_key(),
        status=ACTIVE,
        endpoint=None if endpoint is None else normalize_endpoint(endpoint),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        id=new_account_id(),
    )


def check_limit(rate: float | None, burst: float | None) -> None:
    for name, value in (("rate", rate), ("burst", burst)):
        if value is not None and not (value >= 0 and value < float("inf")):
            raise AccountError(f"a {name} must be a finite number >= 0; got {value!r}")


def check_grace(grace_seconds: float) -> None:
    if not (0 <= grace_seconds <= MAX_GRACE_SECONDS):
        raise AccountError(
            f"a grace period must be 0 to {MAX_GRACE_SECONDS / 86400:g} days;"
            f" got {grace_seconds!r} s"
        )


def working_keys_of(
    accounts: Iterable[Account], previous: Iterable[PreviousKey], now: float
) -> dict[str, Account]:
    """Every key that works at ``now`` (current, or replaced and in its grace period)."""
    by_id = {a.id: a for a in accounts}
    keys = {a.client_key: a for a in by_id.values()}
    for old in previous:
        if old.expires_at > now and old.account_id in by_id:
            keys[old.client_key] = by_id[old.account_id]
    return keys


class AccountBookLike(Protocol):
    """What the server (its AccountDirectory, the admin API, the dashboard) and the CLI use
    of an account book: :class:`AccountBook` (SQLite, one machine) and
    :class:`~qlevents.accounts_jetstream.JetStreamAccountBook` (a NATS cluster's KV)."""

    #: Seconds between the directory's checks of :meth:`data_version`.
    poll_seconds: ClassVar[float]
    #: Whether its methods may be called from any thread at once (writes then run off the
    #: server's event loop).
    thread_safe: ClassVar[bool]

    def close(self) -> None: ...
    def data_version(self) -> int: ...
    def local_endpoint(self, default: str) -> str: ...
    def record_local_endpoint(self, url: str) -> None: ...
    def add(self, name: str, endpoint: str | None = None) -> Account: ...
    def all(self) -> list[Account]: ...
    def get(self, client_key: str) -> Account: ...
    def get_by_id(self, account_id: str) -> Account: ...
    def set_status(self, client_key: str, status: Status) -> Account: ...
    def set_limit(self, client_key: str, rate: float | None, burst: float | None) -> Account: ...
    def move(self, client_key: str, endpoint: str, local_endpoint: str) -> Account: ...
    def rotate_key(
        self, client_key: str, grace_seconds: float = DEFAULT_GRACE_SECONDS
    ) -> tuple[Account, PreviousKey]: ...
    def expire_key(self, client_key: str) -> PreviousKey: ...
    def previous_keys(self, account_id: str | None = None) -> list[PreviousKey]: ...
    def working_keys(self, now: float | None = None) -> dict[str, Account]: ...
    def record_key_uses(self, uses: Mapping[str, float]) -> None: ...
    def key_uses(self, keys: Iterable[str]) -> dict[str, float]: ...


class AccountBook:
    """The accounts of one data directory, read and written with SQLite."""

    poll_seconds: ClassVar[float] = 1.0
    thread_safe: ClassVar[bool] = False

    def __init__(self, data_dir: str | Path, *, readonly: bool = False) -> None:
        """``readonly``: for commands that only read; creates nothing (a book that does not
        exist reads as an empty one)."""
        self.data_dir = Path(data_dir)
        if readonly:
            self._conn = _open_readonly(self.data_dir / ACCOUNTS_FILE)
            return
        self._conn = connect_book(self.data_dir)

    def close(self) -> None:
        self._conn.close()

    def data_version(self) -> int:
        """Changes whenever another connection (the CLI, another worker) changed the book."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    # --- settings of this installation -----------------------------------------------------

    def local_endpoint(self, default: str) -> str:
        """This installation's endpoint URL as ``serve`` last recorded it, else ``default``."""
        row = self._conn.execute(
            "SELECT value FROM settings WHERE name = 'endpoint_url'"
        ).fetchone()
        return str(row[0]) if row else default

    def record_local_endpoint(self, url: str) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO settings (name, value) VALUES ('endpoint_url', ?)",
            (normalize_endpoint(url),),
        )

    # --- accounts ----------------------------------------------------------------------------

    def add(self, name: str, endpoint: str | None = None) -> Account:
        account = new_account(name, endpoint)
        self._conn.execute(
            "INSERT INTO accounts (client_key, name, status, endpoint, created_at, id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                account.client_key,
                account.name,
                account.status,
                account.endpoint,
                account.created_at,
                account.id,
            ),
        )
        return account

    def all(self) -> list[Account]:
        rows = self._conn.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, name"
        ).fetchall()
        return [Account(*row) for row in rows]

    def get(self, client_key: str) -> Account:
        row = self._conn.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE client_key = ?", (client_key,)
        ).fetchone()
        if row is None:
            raise AccountNotFoundError(f"no account has the client key {mask_key(client_key)!r}")
        return Account(*row)

    def set_status(self, client_key: str, status: Status) -> Account:
        self.get(client_key)
        self._conn.execute(
            "UPDATE accounts SET status = ? WHERE client_key = ?", (status, client_key)
        )
        return self.get(client_key)

    def set_limit(self, client_key: str, rate: float | None, burst: float | None) -> Account:
        """Give the account its own rate limit (None: back to the server's default)."""
        self.get(client_key)
        check_limit(rate, burst)
        self._conn.execute(
            "UPDATE accounts SET rate_limit = ?, burst = ? WHERE client_key = ?",
            (rate, burst, client_key),
        )
        return self.get(client_key)

    def move(self, client_key: str, endpoint: str, local_endpoint: str) -> Account:
        """Home the account on ``endpoint``; moving it to this installation's URL brings it home."""
        self.get(client_key)
        url = normalize_endpoint(endpoint)
        stored = None if url == normalize_endpoint(local_endpoint) else url
        self._conn.execute(
            "UPDATE accounts SET endpoint = ? WHERE client_key = ?", (stored, client_key)
        )
        return self.get(client_key)

    # --- key rotation --------------------------------------------------------------------------

    def get_by_id(self, account_id: str) -> Account:
        row = self._conn.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        if row is None:
            raise AccountError(f"no account has the id {account_id!r}")
        return Account(*row)

    def rotate_key(
        self, client_key: str, grace_seconds: float = DEFAULT_GRACE_SECONDS
    ) -> tuple[Account, PreviousKey]:
        """Give the account a new client key; the old one keeps working ``grace_seconds``."""
        check_grace(grace_seconds)
        account = self.get(client_key)
        now = time.time()
        old = PreviousKey(client_key, account.id, now, now + grace_seconds)
        new_key = new_client_key()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "UPDATE accounts SET client_key = ? WHERE client_key = ?", (new_key, client_key)
            )
            self._conn.execute(
                "INSERT INTO previous_keys (client_key, account_id, replaced_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (old.client_key, old.account_id, old.replaced_at, old.expires_at),
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return self.get(new_key), old

    def expire_key(self, client_key: str) -> PreviousKey:
        """End a replaced key's grace period now."""
        now = time.time()
        updated = self._conn.execute(
            "UPDATE previous_keys SET expires_at = MIN(expires_at, ?) WHERE client_key = ?",
            (now, client_key),
        ).rowcount
        if not updated:
            raise AccountError(f"{mask_key(client_key)!r} is not a replaced key")
        return next(k for k in self.previous_keys() if k.client_key == client_key)

    def previous_keys(self, account_id: str | None = None) -> list[PreviousKey]:
        """The replaced keys (of one account, or all), newest first, expired ones included."""
        query = "SELECT client_key, account_id, replaced_at, expires_at FROM previous_keys"
        if account_id is None:
            rows = self._conn.execute(query + " ORDER BY replaced_at DESC").fetchall()
        else:
            rows = self._conn.execute(
                query + " WHERE account_id = ? ORDER BY replaced_at DESC", (account_id,)
            ).fetchall()
        return [PreviousKey(*row) for row in rows]

    def working_keys(self, now: float | None = None) -> dict[str, Account]:
        """Every key that works now, current or in its grace period, with its account."""
        now = time.time() if now is None else now
        return working_keys_of(self.all(), self.previous_keys(), now)

    def record_key_uses(self, uses: Mapping[str, float]) -> None:
        """Remember when each key was last used (a later time replaces an earlier one)."""
        self._conn.executemany(
            "INSERT INTO key_uses (client_key, last_used_at) VALUES (?, ?) ON CONFLICT"
            " (client_key) DO UPDATE SET last_used_at = MAX(last_used_at, excluded.last_used_at)",
            list(uses.items()),
        )

    def key_uses(self, keys: Iterable[str]) -> dict[str, float]:
        """When each of ``keys`` was last used, for those used at all."""
        wanted = list(keys)
        if not wanted:
            return {}
        marks = ", ".join("?" * len(wanted))
        rows = self._conn.execute(
            f"SELECT client_key, last_used_at FROM key_uses WHERE client_key IN ({marks})", wanted
        ).fetchall()
        return {str(key): float(at) for key, at in rows}
