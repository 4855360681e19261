"""The embedded event store: SQLite in WAL mode, fsync'd, with group commit.

One writer thread owns the write connection. Requests that arrive while a commit runs wait
in ``_pending``; when the commit ends they all go into the next transaction, so a burst of
N requests costs one fsync instead of N, and each request is still answered only after its
own events are on disk (``synchronous=FULL``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from qlevents._exceptions import StoreUnavailableError
from qlevents.events import StoredEvent
from qlevents.store.base import (
    IDEMPOTENCY_TTL,
    CommitObserver,
    CommitStats,
    EventStore,
    IdempotencyRecord,
    Replay,
)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL,
    received_at TEXT    NOT NULL,
    client_key  TEXT    NOT NULL,
    event       TEXT    NOT NULL CHECK (event IN ('view', 'conversion')),
    product_id  TEXT    NOT NULL,
    price       REAL    NOT NULL,
    units       INTEGER,
    vid         TEXT,
    permalink   TEXT,
    tags        TEXT    NOT NULL,  -- JSON array of strings
    channels    TEXT    NOT NULL   -- JSON array of strings
);
CREATE TABLE IF NOT EXISTS idempotency (
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    response    BLOB    NOT NULL,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
"""

_INSERT_EVENT: Final = (
    "INSERT INTO events (id, received_at, client_key, event, product_id, price, units, vid,"
    " permalink, tags, channels) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS: Final = (
    "position, id, received_at, client_key, event, product_id, price, units, vid, permalink,"
    " tags, channels"
)
#: How often expired idempotency keys are deleted (seconds).
_EXPIRE_EVERY: Final = 60.0
#: How long after a commit failed for space or I/O the store reports itself unwritable
#: (seconds): a probe that writes nothing passes while commits that need space fail. (A lock
#: held elsewhere is different: the probe sees it.)
_FAILURE_MEMORY: Final = 10.0
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
#: How often the checkpointer copies the WAL into the database (seconds), and the WAL size
#: (pages) past which it makes writers wait for a full checkpoint that resets the WAL.
_CHECKPOINT_EVERY: Final = 0.25
_WAL_RESET_PAGES: Final = 4096

log: Final = logging.getLogger("qlevents.store")
_encode_labels = msgspec.json.Encoder().encode
_decode_labels = msgspec.json.Decoder(list[str]).decode


@dataclass(slots=True)
class _Append:
    events: Sequence[StoredEvent]
    idempotency: IdempotencyRecord | None
    future: asyncio.Future[Replay | None]
    replay: Replay | None = field(default=None)


#: Put on the writer's queue to stop it once everything before it is committed.
_STOP: Final = None


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the pragmas every qlevents connection needs."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class SQLiteEventStore(EventStore):
    """Events in ``<path>``; every acknowledged append is fsync'd (WAL, synchronous=FULL)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        max_pending_events: int = 200_000,
        observer: CommitObserver | None = None,
        wal_reset_pages: int = _WAL_RESET_PAGES,
    ) -> None:
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._max_pending_events = max_pending_events
        self._observer = observer
        self._wal_reset_pages = wal_reset_pages
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: queue.SimpleQueue[_Append | None] = queue.SimpleQueue()
        self._pending_events = 0  # only touched on the event loop's thread
        self._writer: threading.Thread | None = None
        self._last_expiry = 0.0
        self._last_failure: tuple[float, str] | None = None  # set by the writer thread
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpointer = threading.Event()
        self._reset_wal = threading.Event()

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._conn = await asyncio.to_thread(self._open_sync)
        self._writer = threading.Thread(
            target=self._write_loop, name="qlevents-sqlite-writer", daemon=True
        )
        self._writer.start()
        self._stop_checkpointer.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="qlevents-sqlite-checkpointer", daemon=True
        )
        self._checkpointer.start()

    def _open_sync(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.executescript(SCHEMA)
        # Checkpoints copy the WAL into the database and fsync it: left to SQLite they run
        # inside a commit every 1000 pages and stall the requests waiting on it. A thread of
        # their own does them beside the writer instead.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    def _checkpoint_loop(self) -> None:
        conn = connect(self.path)
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        try:
            while not self._stop_checkpointer.wait(_CHECKPOINT_EVERY):
                if self._reset_wal.is_set():
                    continue  # the writer resets the WAL after its next commit
                try:
                    _, wal_pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if wal_pages > self._wal_reset_pages:
                        # Under constant writes a passive checkpoint never catches up and the
                        # WAL would grow without end. Resetting it needs a moment with no
                        # writer; from this connection it would fight the writer for the lock
                        # (seconds, measured), so the writer does it between two commits.
                        self._reset_wal.set()
                except sqlite3.Error:
                    log.warning("checkpoint of %s failed; will retry", self.path, exc_info=True)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(_STOP)  # after everything already queued
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._checkpointer is not None:
            self._stop_checkpointer.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # --- writes: group commit ------------------------------------------------------------

    async def append(
        self, events: Sequence[StoredEvent], idempotency: IdempotencyRecord | None = None
    ) -> Replay | None:
        if self._writer is None or self._loop is None:
            raise StoreUnavailableError("the event store is not open")
        if self._pending_events + len(events) > self._max_pending_events:
            raise StoreUnavailableError(
                f"the store's writer is behind ({self._pending_events} events waiting)"
            )
        future: asyncio.Future[Replay | None] = self._loop.create_future()
        self._pending_events += len(events)
        self._queue.put(_Append(events, idempotency, future))
        return await future

    def _write_loop(self) -> None:
        """The writer thread: commit everything queued so far in one transaction, repeat."""
        assert self._loop is not None
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=_CHECKPOINT_EVERY)
            except queue.Empty:  # idle: a good moment for a WAL reset the checkpointer asked for
                if self._reset_wal.is_set():
                    self._reset_wal_sync()
                continue
            if first is _STOP:
                break
            group = [first]
            while True:  # everything that arrived during the previous commit
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                group.append(more)
            error: BaseException | None = None
            try:
                self._commit_sync(group)
                self._last_failure = None
            except Exception as exc:  # a bug must fail these requests, not kill the writer
                error = exc
                if not isinstance(exc, StoreUnavailableError):
                    log.exception("commit failed")
            # One hop back to the event loop per group, not per request.
            self._loop.call_soon_threadsafe(self._resolve, group, error)
            if error is None and self._reset_wal.is_set():
                # Between two commits: copy what the passive checkpoints have not, then start
                # the WAL over. Requests queued meanwhile go into the next commit.
                self._reset_wal_sync()

    def _reset_wal_sync(self) -> None:
        assert self._conn is not None
        started = time.perf_counter()
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            log.warning("resetting the WAL of %s failed; will retry", self.path, exc_info=True)
        finally:
            self._reset_wal.clear()
        held = time.perf_counter() - started
        if held > 0.5:
            log.warning("resetting the WAL held the writer for %.2f s", held)

    def _resolve(self, group: list[_Append], error: BaseException | None) -> None:
        for append in group:
            self._pending_events -= len(append.events)
            if append.future.done():  # the caller went away (cancelled)
                continue
            if error is None:
                append.future.set_result(append.replay)
            else:
                append.future.set_exception(error)

    def _commit_sync(self, group: list[_Append]) -> None:
        conn = self._conn
        assert conn is not None
        started = time.perf_counter()
        now = time.time()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored: list[Sequence[StoredEvent]] = []
                for append in group:
                    append.replay = None
                    if append.idempotency is not None:
                        append.replay = self._claim_key(conn, append.idempotency, now)
                        if append.replay is not None:
                            continue
                    stored.append(append.events)
                # One executemany for the whole group: most groups are many small requests.
                rows = [_row(event) for events in stored for event in events]
                conn.executemany(_INSERT_EVENT, rows)
                count = len(rows)
                if now - self._last_expiry > _EXPIRE_EVERY:
                    conn.execute(
                        "DELETE FROM idempotency WHERE created_at < ?", (now - IDEMPOTENCY_TTL,)
                    )
                    self._last_expiry = now
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (_SQLITE_BUSY, _SQLITE_LOCKED):
                # A full disk or an I/O error: a probe that writes nothing would not see it.
                self._last_failure = (time.monotonic(), str(exc))
            raise StoreUnavailableError(f"the event store cannot take writes: {exc}") from exc
        if self._observer is not None:
            self._observer(CommitStats(len(group), count, time.perf_counter() - started))

    @staticmethod
    def _claim_key(
        conn: sqlite3.Connection, record: IdempotencyRecord, now: float
    ) -> Replay | None:
        row = conn.execute(
            "SELECT fingerprint, response, created_at FROM idempotency WHERE scope = ? AND key = ?",
            (record.scope, record.key),
        ).fetchone()
        if row is not None and now - row[2] < IDEMPOTENCY_TTL:
            return Replay(bytes(row[0]), bytes(row[1]))
        conn.execute(
            "INSERT OR REPLACE INTO idempotency (scope, key, fingerprint, response, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (record.scope, record.key, record.fingerprint, record.response, now),
        )
        return None

    # --- reads ---------------------------------------------------------------------------

    async def read(
        self, after: int = 0, limit: int = 1000, client_key: str | None = None
    ) -> list[tuple[int, StoredEvent]]:
        return await asyncio.to_thread(self.read_sync, after, limit, client_key)

    def read_sync(
        self, after: int = 0, limit: int = 1000, client_key: str | None = None
    ) -> list[tuple[int, StoredEvent]]:
        """``read`` for callers without an event loop (the CLI's export)."""
        if not self.path.exists():
            return []
        conn = connect(self.path, readonly=True)
        try:
            if client_key is None:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                    (after, limit),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE client_key = ? AND position > ?"
                    " ORDER BY position LIMIT ?",
                    (client_key, after, limit),
                ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()
        return [(row[0], _event(row)) for row in rows]

    async def check_writable(self) -> None:
        if self._writer is None:
            raise StoreUnavailableError("the event store is not open")
        failure = self._last_failure
        if failure is not None and time.monotonic() - failure[0] < _FAILURE_MEMORY:
            raise StoreUnavailableError(f"the last commit failed: {failure[1]}")
        await asyncio.to_thread(self._check_writable_sync)

    def _check_writable_sync(self) -> None:
        # A connection of its own: the writer's belongs to the writer thread. Taking the
        # write lock for an instant proves the disk and the lock are available.
        try:
            conn = connect(self.path)
            try:
                conn.execute("PRAGMA busy_timeout = 1000")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"the event store cannot take writes: {exc}") from exc


def _row(event: StoredEvent) -> tuple[object, ...]:
    return (
        event.id,
        event.received_at,
        event.client_key,
        event.event,
        event.product_id,
        event.price,
        event.units,
        event.vid,
        event.permalink,
        _encode_labels(event.tags).decode(),
        _encode_labels(event.channels).decode(),
    )


def _event(row: tuple[object, ...]) -> StoredEvent:
    (_, id_, received_at, client_key, kind, product_id, price, units, vid, permalink) = row[:10]
    return StoredEvent(
        id=str(id_),
        received_at=str(received_at),
        client_key=str(client_key),
        event=str(kind),
        product_id=str(product_id),
        price=float(price),  # type: ignore[arg-type]
        units=None if units is None else int(units),  # type: ignore[call-overload]
        vid=None if vid is None else str(vid),
        permalink=None if permalink is None else str(permalink),
        tags=_decode_labels(str(row[10])),
        channels=_decode_labels(str(row[11])),
    )
