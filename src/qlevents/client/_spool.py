"""The durable spool: queued events kept in SQLite until the server has answered for them.

``put`` commits in the caller's thread (or on its event loop) before ``view()`` returns.
WAL with ``synchronous=NORMAL``: a commit is in the operating system's page cache when it
returns, so it survives the process being killed (SIGKILL, OOM, a crash); only a power loss
or kernel crash can lose the last commits. A batch is formed and its Idempotency-Key committed
*before* its first send, so a client restarted on the spool sends the same body with the
same key and the server stores it once. One process at a time sends from a spool: the one
holding the lock file (``flock``, released by the kernel when its holder dies); the others
only write to it. ``Client`` and ``AsyncClient`` use it alike: the format is one.

It is bounded: at ``max_bytes`` (the events' encoded size) or ``max_events``, new events are
refused, not old ones evicted: an event the spool took is never thrown away afterwards (its
batch may be on the wire, its key committed), as the memory queue refuses when full. The
totals are kept by triggers, so the check is one conditional INSERT whoever wrote before.

Each process writes its rows under an owner id of its own, and whichever process sends them
tallies their outcome (stored, or the code they were refused with) under that owner, in the
transaction that deletes them: ``flush()`` in a process that does not send learns what
became of its own events.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import msgspec

from qlevents.client._batch import Batch, FlushMark
from qlevents.client._build import Encoded
from qlevents.client._delivery import new_idempotency_key
from qlevents.client._outcome import SPOOL_FULL, STORED, Outcome, Tally
from qlevents.client._signal import Signal

SPOOL_FILE: Final = "qlevents-spool.sqlite3"
LOCK_FILE: Final = "qlevents-spool.lock"
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS groups (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    events  BLOB    NOT NULL,   -- the group's encoded events joined by ","
    count   INTEGER NOT NULL,
    created REAL    NOT NULL,
    batch   INTEGER,            -- NULL until it is put in a batch
    owner   INTEGER             -- the Spool (process) that put it
);
CREATE INDEX IF NOT EXISTS groups_by_batch ON groups (batch);
CREATE TABLE IF NOT EXISTS batches (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    key  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    owner INTEGER NOT NULL,
    code  TEXT    NOT NULL,     -- "stored", or the error code an event was refused with
    count INTEGER NOT NULL,
    PRIMARY KEY (owner, code)
);
CREATE TABLE IF NOT EXISTS totals (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    events INTEGER NOT NULL,
    bytes  INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS totals_on_put AFTER INSERT ON groups BEGIN
    UPDATE totals SET events = events + new.count, bytes = bytes + length(new.events);
END;
CREATE TRIGGER IF NOT EXISTS totals_on_delete AFTER DELETE ON groups BEGIN
    UPDATE totals SET events = events - old.count, bytes = bytes - length(old.events);
END;
INSERT OR IGNORE INTO totals (id, events, bytes)
    SELECT 1, COALESCE(SUM(count), 0), COALESCE(SUM(length(events)), 0) FROM groups;
"""
#: Put a group, unless it would take the spool past a cap.
_PUT: Final = """
INSERT INTO groups (events, count, created, owner) SELECT :events, :count, :created, :owner
WHERE (SELECT events + :count <= :cap_events AND bytes + length(:events) <= :cap_bytes
       FROM totals)
"""
_UNBOUNDED: Final = 2**62
#: Stale connections of a parent process: never closed in a forked child (SQLite forbids it).
_inherited: list[Any] = []


class Spool:
    """A spool directory: the :class:`~qlevents.client._batch.Source` of a client given one."""

    #: A flush polls as well as waits: another process may be the one that sends.
    recheck: Final = 0.05

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_events: int,
        max_bytes: int,
        interval: float,
        *,
        cap_events: int | None = None,
        cap_bytes: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.interval = interval
        self.cap_events = _UNBOUNDED if cap_events is None else cap_events
        self.cap_bytes = _UNBOUNDED if cap_bytes is None else cap_bytes
        self.ready = Signal()
        self.settled = Signal()
        self.tally = Tally()
        self.owner = int.from_bytes(os.urandom(8)) >> 1  # a positive SQLite integer
        self._db_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._conn = self._connect()
        #: Once closed: (events, bytes) left in it, and this process's tally.
        self._closed: tuple[tuple[int, int], dict[str, int]] | None = None
        self._lock_fd: int | None = None
        # What is in the spool already counts as queued: flush() waits for it too.
        self._sender_idle = True
        self._unannounced = 0
        self._last_put = int(
            self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM groups").fetchone()[0]
        )
        self._urgent = 0
        self._stopping = False
        self._aborting = False

    @property
    def aborting(self) -> bool:
        return self._aborting

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.directory / SPOOL_FILE, isolation_level=None, check_same_thread=False, timeout=30
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            columns = {row[1] for row in conn.execute("PRAGMA table_info(groups)")}
            if columns and "owner" not in columns:  # a spool made before the tally
                conn.execute("ALTER TABLE groups ADD COLUMN owner INTEGER")
            conn.execute("COMMIT")
            # One transaction: the totals start from the rows there are, and count every
            # row put from then on, whichever process puts it.
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        return conn

    def abandon(self) -> None:
        """In a forked child: let go of the parent's connection and lock, touching neither."""
        _inherited.append(self._conn)  # closing it here could disturb the parent's
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # a copy: the parent's lock stays held
            self._lock_fd = None

    def close(self) -> None:
        size, outcomes = self.size(), self.outcomes()
        with self._db_lock:
            # Nobody else reads this process's tally; rows of a process that died stay
            # (one per outcome code: a few bytes).
            self._conn.execute("DELETE FROM outcomes WHERE owner = ?", (self.owner,))
            self._conn.close()
            self._closed = (size, outcomes)  # what stats() and flush() say from now on
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- the caller's side -------------------------------------------------------------------

    def put(self, group: tuple[Encoded, ...]) -> bool:
        """Store a group durably (committed when this returns); False (and tallied
        ``spool_full``) when it would take the spool past its cap."""
        data = b",".join(group)
        count = len(group)
        with self._db_lock:
            cursor = self._conn.execute(
                _PUT,
                {
                    "events": data,
                    "count": count,
                    "created": time.time(),
                    "owner": self.owner,
                    "cap_events": self.cap_events,
                    "cap_bytes": self.cap_bytes,
                },
            )
            if not cursor.rowcount:
                self.tally.add(SPOOL_FULL, count)
                return False
            self._last_put = cursor.lastrowid or self._last_put
            self._unannounced += len(group)
            # Wake the sender when it sleeps on an empty spool or a batch is full; otherwise
            # it wakes by itself when the oldest event is due (every put would wake it).
            wake = self._sender_idle or self._unannounced >= self.max_events
            if wake:
                self._sender_idle = False
                self._unannounced = 0
        if wake:
            self.ready.fire()
        return True

    def pending(self) -> int:
        return self.size()[0]

    def size(self) -> tuple[int, int]:
        """(events, bytes) in the spool, from every process."""
        with self._db_lock:
            if self._closed is not None:
                return self._closed[0]
            events, nbytes = self._conn.execute("SELECT events, bytes FROM totals").fetchone()
        return int(events), int(nbytes)

    def outcomes(self) -> dict[str, int]:
        with self._db_lock:
            if self._closed is not None:
                return dict(self._closed[1])
            rows = self._conn.execute(
                "SELECT code, count FROM outcomes WHERE owner = ?", (self.owner,)
            ).fetchall()
        counts = self.tally.snapshot()
        for code, count in rows:
            counts[code] = counts.get(code, 0) + int(count)
        return counts

    def begin_flush(self) -> FlushMark:
        with self._state_lock:
            self._urgent += 1
        self.ready.fire()
        return self._last_put, 0

    def flush_state(self, mark: FlushMark) -> tuple[bool, bool, int]:
        left = self._left_through(mark[0])
        return not left or self._aborting, not left, left

    def end_flush(self) -> None:
        with self._state_lock:
            self._urgent -= 1

    def _left_through(self, row_id: int) -> int:
        with self._db_lock:
            row = self._conn.execute(
                "SELECT COALESCE(SUM(count), 0) FROM groups WHERE id <= ?", (row_id,)
            ).fetchone()
        return int(row[0])

    # --- the sender's side -------------------------------------------------------------------

    def _own(self) -> bool:
        if self._lock_fd is not None:
            return True
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def poll(self) -> Batch | float | None:
        if self._aborting:
            return None
        if not self._own():
            return None if self._stopping else 0.5  # another process sends from this spool
        batch, wait = self._next_batch()
        if batch is not None:
            return batch
        if self._stopping:
            return None
        return min(wait, 0.05) if self._urgent else wait

    def _next_batch(self) -> tuple[Batch | None, float]:
        with self._db_lock:
            conn = self._conn
            row = conn.execute("SELECT id, key FROM batches ORDER BY id LIMIT 1").fetchone()
            if row is not None:  # formed before (by us, or by a process that died): send again
                return self._load(row[0], row[1]), 0
            count, size, oldest = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(count), 0), MIN(created) FROM groups"
                " WHERE batch IS NULL"
            ).fetchone()
            if not count:
                self._sender_idle = True
                return None, 1.0
            due = oldest + self.interval - time.time()
            if due > 0 and not (self._urgent or self._stopping or size >= self.max_events):
                return None, min(due, 1.0)
            conn.execute("BEGIN IMMEDIATE")
            try:
                chosen: list[int] = []
                events = 0
                nbytes = 2
                for group_id, group_count, group_bytes in conn.execute(
                    "SELECT id, count, length(events) FROM groups WHERE batch IS NULL"
                    " ORDER BY id LIMIT ?",
                    (self.max_events,),
                ):
                    if chosen and (
                        events + group_count > self.max_events
                        or nbytes + group_bytes + 1 > self.max_bytes
                    ):
                        break
                    chosen.append(group_id)
                    events += group_count
                    nbytes += group_bytes + 1
                key = new_idempotency_key()
                batch_id = conn.execute("INSERT INTO batches (key) VALUES (?)", (key,)).lastrowid
                conn.executemany(
                    "UPDATE groups SET batch = ? WHERE id = ?", [(batch_id, g) for g in chosen]
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            assert batch_id is not None
            return self._load(batch_id, key), 0

    def _load(self, batch_id: int, key: str) -> Batch:
        rows = self._conn.execute(
            "SELECT events, count FROM groups WHERE batch = ? ORDER BY id", (batch_id,)
        ).fetchall()
        events: list[Encoded] = []
        groups: list[int] = []
        for fragment, count in rows:
            # The body is rebuilt byte for byte on a re-send: same events, same order.
            if count == 1:
                events.append(bytes(fragment))
            else:
                events.extend(_split_fragment(bytes(fragment), count))
            groups.append(count)
        return Batch(events, groups, key=key, spool_id=batch_id)

    def settle(self, batch: Batch, outcome: Outcome) -> None:
        if not outcome.unanswered:
            with self._db_lock:
                conn = self._conn
                conn.execute("BEGIN IMMEDIATE")
                try:
                    rows = conn.execute(
                        "SELECT owner, count FROM groups WHERE batch = ? ORDER BY id",
                        (batch.spool_id,),
                    ).fetchall()
                    conn.executemany(
                        "INSERT INTO outcomes (owner, code, count) VALUES (?, ?, ?)"
                        " ON CONFLICT (owner, code) DO UPDATE SET count = count + excluded.count",
                        _by_owner(rows, outcome),
                    )
                    conn.execute("DELETE FROM groups WHERE batch = ?", (batch.spool_id,))
                    conn.execute("DELETE FROM batches WHERE id = ?", (batch.spool_id,))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        self.settled.fire()

    def resume(self, batch: Batch) -> None:
        # It is still in the spool, key and all: the next poll() hands it out again.
        self.ready.fire()

    def stop(self, abort: bool = False) -> None:
        with self._state_lock:
            self._stopping = True
            self._aborting = self._aborting or abort
        self.ready.fire()
        self.settled.fire()


def _by_owner(rows: list[tuple[int | None, int]], outcome: Outcome) -> list[tuple[int, str, int]]:
    """(owner, code, events) for a settled batch: its rows' owners, in the order its events
    were sent, each event's code from ``outcome`` (``stored`` unless it names another)."""
    counts: Counter[tuple[int, str]] = Counter()
    index = 0
    for owner, count in rows:
        for _ in range(count):
            if owner is not None:  # a row put by a qlevents that did not tally
                counts[owner, outcome.not_stored.get(index, STORED)] += 1
            index += 1
    return [(owner, code, count) for (owner, code), count in counts.items()]


def _split_fragment(fragment: bytes, count: int) -> list[Encoded]:
    # A group's events joined by ",": split without decoding them, as raw JSON values.
    raws = msgspec.json.decode(b"[" + fragment + b"]", type=list[msgspec.Raw])
    assert len(raws) == count
    return [bytes(raw) for raw in raws]
