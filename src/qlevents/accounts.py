"""Accounts (client keys) and the endpoints they are homed on.

An account belongs to one installation of the service: the one whose endpoint URL it is
homed on. Its ``endpoint`` is None while it is homed on the installation that owns the data
directory, or the URL of another installation after ``move``. The book lives in
``<data-dir>/accounts.sqlite3`` so the CLI and every server worker share it.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from qlevents._exceptions import QleventsError

ACCOUNTS_FILE: Final = "accounts.sqlite3"
KEY_PREFIX: Final = "qlk_"
ACTIVE: Final = "active"
DISABLED: Final = "disabled"
Status = Literal["active", "disabled"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accounts (
    client_key TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    endpoint   TEXT,            -- NULL: homed on this installation
    created_at TEXT NOT NULL,
    rate_limit REAL,            -- events per second; NULL: the server's default; 0: unlimited
    burst      REAL             -- bucket size; NULL: the server's default
);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class AccountError(QleventsError):
    """An account operation was refused (unknown key, bad URL, bad name)."""


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

    def home(self, local_endpoint: str) -> str:
        """The URL this account's events must be sent to."""
        return self.endpoint or local_endpoint

    def as_dict(self, local_endpoint: str) -> dict[str, object]:
        """The account as the CLI and the admin API show it."""
        shown: dict[str, object] = asdict(self)
        shown["endpoint"] = self.home(local_endpoint)
        return shown


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
    if not path.exists():
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        conn.executescript(_SCHEMA)
        return conn
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class AccountBook:
    """The accounts of one data directory, read and written with SQLite."""

    def __init__(self, data_dir: str | Path, *, readonly: bool = False) -> None:
        """``readonly``: for commands that only read; creates nothing (a book that does not
        exist reads as an empty one)."""
        self.data_dir = Path(data_dir)
        if readonly:
            self._conn = _open_readonly(self.data_dir / ACCOUNTS_FILE)
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.data_dir / ACCOUNTS_FILE, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(accounts)")}
        for column in ("rate_limit", "burst"):  # books made before rate limits existed
            if column not in columns:
                self._conn.execute(f"ALTER TABLE accounts ADD COLUMN {column} REAL")

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
        name = name.strip()
        if not name or len(name) > 200:
            raise AccountError("an account name must be 1 to 200 characters")
        account = Account(
            name=name,
            client_key=new_client_key(),
            status=ACTIVE,
            endpoint=None if endpoint is None else normalize_endpoint(endpoint),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self._conn.execute(
            "INSERT INTO accounts (client_key, name, status, endpoint, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                account.client_key,
                account.name,
                account.status,
                account.endpoint,
                account.created_at,
            ),
        )
        return account

    def all(self) -> list[Account]:
        rows = self._conn.execute(
            "SELECT name, client_key, status, endpoint, created_at, rate_limit, burst FROM accounts"
            " ORDER BY created_at, name"
        ).fetchall()
        return [Account(*row) for row in rows]

    def get(self, client_key: str) -> Account:
        row = self._conn.execute(
            "SELECT name, client_key, status, endpoint, created_at, rate_limit, burst FROM accounts"
            " WHERE client_key = ?",
            (client_key,),
        ).fetchone()
        if row is None:
            raise AccountError(f"no account has the client key {mask_key(client_key)!r}")
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
        for name, value in (("rate", rate), ("burst", burst)):
            if value is not None and not (value >= 0 and value < float("inf")):
                raise AccountError(f"a {name} must be a finite number >= 0; got {value!r}")
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
