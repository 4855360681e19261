"""The embedded store's writer: a process of its own that commits events to SQLite.

Why a process and not a thread: Python's sqlite3 lets the GIL go around every SQLite call
and must take it back afterwards. A writer thread beside a busy event loop waited for the
GIL after each call, and every time the loop let the GIL go it woke the writer only to lose
the race again: ~10 context switches per commit, and the writer's Python work (building
rows) came out of the same core as the HTTP work. Measured side by side, the writer cost
the server 30% of its single-event throughput and 57% with 100-event requests. In a
process of its own the writer runs on the other core, and the server only builds each
request's INSERT parameters, encodes them (msgpack, in C) and reads one answer per commit.

The parameters are built by the server, flat and in column order, because with 100-event
requests the writer became the busier of the two (80-84% of a core against the event
loop's 65%): decoding events as structs and building the parameters from them was ~28% of
the writer's time. Side by side, 100 events 3.7k -> 4.2k req/s, p99 14.9 -> 12.5 ms.

The protocol, over the child's stdin and stdout, one frame = 4-byte little-endian length +
msgpack body:

- the store sends batches of :class:`AppendMessage` (all appends of one event-loop
  iteration in one frame), each with a sequence number;
- the writer answers :class:`Started` once, then one :class:`Committed` per commit, which
  answers every append up to ``upto``. A batch of appends read together is committed in one
  transaction (group commit): one fsync for all of them, with ``synchronous=FULL``.

The writer stops when its stdin closes (the server closed the store, or died), after
committing every whole frame it read. It ignores SIGINT and SIGTERM: those are for the
server, which finishes its requests and then closes the store.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from qlevents.sqlite_schema import SchemaVersionError, migrate
from qlevents.store.base import IDEMPOTENCY_TTL
from qlevents.store.sqlite_db import (
    EXACT_ROWS,
    FIELDS,
    INSERT_ROWS,
    MIGRATIONS,
    connect,
    statement_sizes,
)

log: Final = logging.getLogger("qlevents.store")

#: How often expired idempotency keys are deleted (seconds).
_EXPIRE_EVERY: Final = 60.0
#: SQLite's answers to a connection that wants a lock another one holds.
_LOCK_HELD: Final = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
#: How the writer waits for SQLite's write lock when another writer holds it (with
#: ``--workers N`` each worker has its own writer process): polls, the first after
#: LOCK_POLL_FIRST seconds, doubling up to LOCK_POLL_MAX, until the busy timeout. SQLite's
#: own busy handler sleeps up to 100 ms between tries (1, 2, 5, 10, ... 50, 100 ms), and
#: with two busy writers the loser kept losing: p99 0.7-1.1 s with 100-event requests on two
#: workers, against 15 ms on one. Another writer's commit holds the lock for a few ms.
LOCK_POLL_FIRST: Final = 0.0002
LOCK_POLL_MAX: Final = 0.002
#: How often, at most, the checkpointer copies the WAL into the database (seconds), and the
#: WAL size (pages) past which the writer restarts the WAL between two commits. Small copies
#: often disturb the commits less than large ones seldom: one passive checkpoint of 50 ms of
#: 100-event traffic copied ~10 MB in ~8 ms (p99 20 ms), and the commits running beside it
#: took ~3x longer. Measured side by side, 100-event p99: 250 ms 38 ms, 50 ms 25-29 ms,
#: 10 ms 20 ms, 5 ms 15-18 ms (2 ms: no better). The checkpointer only runs after commits,
#: so an idle server does not wake up for it.
CHECKPOINT_EVERY: Final = 0.005
WAL_RESET_PAGES: Final = 4096
#: How long a WAL restart waits for readers on an older snapshot (and other writers) before
#: it gives up until later: the writer commits nothing meanwhile. Waiting for the whole busy
#: timeout, a reader that held a read transaction for 12 s (a backup, an operator's query)
#: held the writer for 5 s twice: 100-event throughput fell from ~4k to 1.3k req/s, p99
#: 1.7 s. After a restart that could not finish, the next waits RESTART_BACKOFF_FIRST,
#: doubling up to RESTART_BACKOFF_MAX; the WAL grows meanwhile (SQLite cannot reset it under
#: a reader), and a warning names how long and how large once it is past RESTART_WARN_AFTER.
RESTART_WAIT_MS: Final = 20
RESTART_BACKOFF_FIRST: Final = 0.01
RESTART_BACKOFF_MAX: Final = 1.0
RESTART_WARN_AFTER: Final = 30.0
#: How long the writer waits for appends before it looks for idle work (a WAL restart).
_IDLE_WAIT: Final = 0.25
_READ_SIZE: Final = 1 << 20


# --- the protocol ------------------------------------------------------------------------


class AppendMessage(msgspec.Struct, array_like=True, gc=False):
    """One request's events (and idempotency record, when it has a key)."""

    seq: int
    #: The INSERT parameters of the events, flat, row after row (sqlite_db.insert_values).
    values: list[Any]
    scope: str | None = None
    key: str | None = None
    fingerprint: bytes = b""
    response: bytes = b""


#: What a replayed append answers: the first request's (fingerprint, response).
_Replay = tuple[bytes, bytes]


class Started(msgspec.Struct, array_like=True, tag=True):
    """The writer's first frame: the database is open (or ``error`` says why not)."""

    error: str | None = None


class Committed(msgspec.Struct, array_like=True, tag=True):
    """The outcome of one commit, for every append with ``seq <= upto`` not answered yet."""

    upto: int
    #: seq -> (fingerprint, response) of the appends whose key was already used.
    replays: dict[int, _Replay] = {}
    #: Set when nothing of these appends was stored.
    error: str | None = None
    #: The error was about space or I/O (not a lock held elsewhere).
    failure: bool = False
    requests: int = 0
    events: int = 0
    seconds: float = 0.0


WriterMessage = Started | Committed
HEADER: Final = struct.Struct("<I")
encode: Final = msgspec.msgpack.Encoder().encode
decode_batch: Final = msgspec.msgpack.Decoder(list[AppendMessage]).decode
decode_reply: Final = msgspec.msgpack.Decoder(WriterMessage).decode


def frame(message: object) -> bytes:
    body = encode(message)
    return HEADER.pack(len(body)) + body


def take_frames(buffer: bytearray) -> list[bytes]:
    """Cut the whole frames off the front of ``buffer``."""
    frames: list[bytes] = []
    at = 0
    while len(buffer) - at >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer, at)
        end = at + HEADER.size + size
        if end > len(buffer):
            break
        frames.append(bytes(buffer[at + HEADER.size : end]))
        at = end
    del buffer[:at]
    return frames


# --- the writer --------------------------------------------------------------------------


_T = TypeVar("_T")


def _error_code(exc: sqlite3.Error) -> int:
    """The primary result code of an SQLite error (extended codes carry more bits)."""
    return int(getattr(exc, "sqlite_errorcode", 0)) & 0xFF


class Writer:
    """Owns the write connection; commits groups of appends."""

    def __init__(
        self, path: Path, *, synchronous: str, wal_reset_pages: int, busy_timeout_ms: int
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.wal_reset_pages = wal_reset_pages
        self.busy_timeout_ms = busy_timeout_ms
        self.conn: sqlite3.Connection | None = None
        #: Waits between two tries for the write lock (tests replace it).
        self.sleep = time.sleep
        self._last_expiry = 0.0
        self._reset_wal = threading.Event()
        #: WAL restarts that could not finish: since when, and when to try again.
        self._restart_failing_since: float | None = None
        self._restart_backoff = RESTART_BACKOFF_FIRST
        self._next_restart = 0.0
        self._warned_restart = False
        #: Set after each commit: there may be something to checkpoint.
        self._committed = threading.Event()
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None

    def open(self) -> None:
        """Open (or create) the database. Two writers creating it at once (``--workers N``
        on a new data directory) can meet a lock that SQLite reports at once instead of
        waiting for it (switching to WAL, creating the tables): tried again."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = self._while_locked(self._connect)
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="qlevents-sqlite-checkpointer", daemon=True
        )
        self._checkpointer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = connect(self.path, busy_timeout_ms=self.busy_timeout_ms)
        try:
            self._set_up(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        # Pruned events give their pages back to the file system (``qlevents events prune``).
        # Only a new file takes it (SQLite fixes it with the first table); 0.1.0's files
        # reuse freed pages instead until ``prune --vacuum`` rewrites them.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        migrate(conn, f"the event store {self.path}", MIGRATIONS)
        # Checkpoints copy the WAL into the database and fsync it: left to SQLite they run
        # inside a commit every 1000 pages and stall the requests waiting on it. A thread of
        # their own does them beside the commits instead.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        # A restarted WAL is written over from its start, not truncated: appending to a file
        # makes every fdatasync commit the file's new size too (~40% more per commit,
        # measured). The limit cuts back what one burst grew past it.
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA journal_size_limit = {self.wal_reset_pages * page_size}")
        # From here on a busy write lock is reported at once, and commit() polls for it.
        conn.execute("PRAGMA busy_timeout = 0")

    def close(self) -> None:
        self._stop.set()
        self._committed.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _checkpoint_loop(self) -> None:
        conn = connect(self.path, busy_timeout_ms=self.busy_timeout_ms)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        try:
            # close() sets _stop, then _committed. The clear() below may swallow the second
            # (close() landing just before it), so _stop is looked at again before each wait.
            while not self._stop.is_set():
                self._committed.wait()
                # At most one checkpoint per CHECKPOINT_EVERY, whatever the commit rate.
                if self._stop.wait(CHECKPOINT_EVERY):
                    break
                self._committed.clear()
                if self._reset_wal.is_set() and time.monotonic() >= self._next_restart:
                    continue  # the writer restarts the WAL after its next commit
                # (While a reader holds the restart back, copying goes on here, beside the
                # commits, so that the restart has little left to copy when it comes.)
                try:
                    _, wal_pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if wal_pages > self.wal_reset_pages:
                        # Under constant writes a passive checkpoint never catches up and the
                        # WAL would grow without end. Restarting it needs a moment with no
                        # writer; from this connection it would fight the writer for the lock
                        # (seconds, measured), so the writer does it between two commits.
                        self._reset_wal.set()
                except sqlite3.Error:
                    log.warning("checkpoint of %s failed; will retry", self.path, exc_info=True)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def reset_wal_if_asked(self) -> None:
        """Between two commits: copy what the passive checkpoints have not, restart the WAL.

        It waits at most RESTART_WAIT_MS for readers still on an older snapshot (and for
        other writers); when they are not done, it tries again later, backing off."""
        if not self._reset_wal.is_set():
            return
        now = time.monotonic()
        if now < self._next_restart:
            return  # the last try met a reader; the request stays for later
        self._reset_wal.clear()
        conn = self.conn
        assert conn is not None
        try:
            conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
            busy, wal_pages, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error:
            log.warning("restarting the WAL of %s failed; will retry", self.path, exc_info=True)
            busy, wal_pages = 1, -1
        finally:
            conn.execute("PRAGMA busy_timeout = 0")
        if not busy:
            if self._warned_restart:
                log.info("the WAL of %s was restarted again", self.path)
            self._restart_failing_since = None
            self._restart_backoff = RESTART_BACKOFF_FIRST
            self._warned_restart = False
            return
        self._reset_wal.set()  # not done: try again after the back-off
        now = time.monotonic()  # counted from the end of this try
        self._next_restart = now + self._restart_backoff
        self._restart_backoff = min(self._restart_backoff * 2, RESTART_BACKOFF_MAX)
        if self._restart_failing_since is None:
            self._restart_failing_since = now
        failing = now - self._restart_failing_since
        if failing > RESTART_WARN_AFTER and not self._warned_restart:
            self._warned_restart = True
            log.warning(
                "the WAL of %s could not be restarted for %.0f s and holds %d pages: a reader"
                " keeps a read transaction open on an old snapshot (a backup, a query); it"
                " grows until that transaction ends",
                self.path,
                failing,
                wal_pages,
            )

    def commit(
        self,
        appends: list[AppendMessage],
        arrived: Callable[[], list[AppendMessage]] = list,
    ) -> Committed:
        """Store every append of ``appends`` in one transaction; say how it went.

        While another writer holds the lock, the appends ``arrived`` returns join the
        group (``appends`` grows): the commit that finally gets the lock stores them all.
        """
        started = time.perf_counter()
        try:
            # A try that meets the lock has stored nothing: its first statement (the INSERT,
            # or BEGIN IMMEDIATE) is the one that asks for it.
            count, replays = self._while_locked(
                lambda: self._commit(appends), meanwhile=lambda: appends.extend(arrived())
            )
            self._committed.set()
        except sqlite3.Error as exc:
            return Committed(
                appends[-1].seq,
                error=f"the event store cannot take writes: {exc}",
                # A full disk or an I/O error: a probe that writes nothing would not see it.
                failure=_error_code(exc) not in _LOCK_HELD,
            )
        except Exception as exc:  # a bug must fail these appends, not kill the writer
            log.exception("commit failed")
            return Committed(appends[-1].seq, error=f"the event store's writer failed: {exc!r}")
        return Committed(
            appends[-1].seq,
            replays=replays,
            requests=len(appends),
            events=count,
            seconds=time.perf_counter() - started,
        )

    def _while_locked(
        self, attempt: Callable[[], _T], meanwhile: Callable[[], object] = lambda: None
    ) -> _T:
        """``attempt()``, tried again while another connection holds the lock it needs, for
        up to the busy timeout: after LOCK_POLL_FIRST, doubling up to LOCK_POLL_MAX, with
        ``meanwhile()`` called between two tries."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        pause = LOCK_POLL_FIRST
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                left = deadline - time.monotonic()
                if _error_code(exc) not in _LOCK_HELD or left <= 0:
                    raise
                self.sleep(min(pause, left))
                pause = min(pause * 2, LOCK_POLL_MAX)
                meanwhile()

    def _commit(self, appends: Sequence[AppendMessage]) -> tuple[int, dict[int, _Replay]]:
        conn = self.conn
        assert conn is not None
        now = time.time()
        expire = now - self._last_expiry > _EXPIRE_EVERY
        for append in appends:
            if len(append.values) % FIELDS:  # rows would shift into each other's columns
                raise ValueError(
                    f"append {append.seq} holds {len(append.values)} values,"
                    f" not whole rows of {FIELDS}"
                )
        count = sum(len(append.values) for append in appends) // FIELDS
        if not expire and 0 < count <= EXACT_ROWS and all(a.key is None for a in appends):
            # The common case is one statement, which is its own transaction.
            conn.execute(INSERT_ROWS[count], [v for a in appends for v in a.values])
            return count, {}
        replays: dict[int, _Replay] = {}
        conn.execute("BEGIN IMMEDIATE")
        try:
            values: list[Any] = []
            for append in appends:
                if append.key is not None:
                    replay = self._claim_key(conn, append, now)
                    if replay is not None:
                        replays[append.seq] = replay
                        continue
                values.extend(append.values)
            stored = len(values) // FIELDS
            at = 0
            for rows in statement_sizes(stored):
                end = at + rows * FIELDS
                conn.execute(INSERT_ROWS[rows], values[at:end])
                at = end
            if expire:
                conn.execute(
                    "DELETE FROM idempotency WHERE created_at < ?", (now - IDEMPOTENCY_TTL,)
                )
                self._last_expiry = now
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return stored, replays

    @staticmethod
    def _claim_key(conn: sqlite3.Connection, append: AppendMessage, now: float) -> _Replay | None:
        row = conn.execute(
            "SELECT fingerprint, response, created_at FROM idempotency WHERE scope = ? AND key = ?",
            (append.scope, append.key),
        ).fetchone()
        if row is not None and now - row[2] < IDEMPOTENCY_TTL:
            return bytes(row[0]), bytes(row[1])
        conn.execute(
            "INSERT OR REPLACE INTO idempotency (scope, key, fingerprint, response, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (append.scope, append.key, append.fingerprint, append.response, now),
        )
        return None


def _read_available(fd: int, buffer: bytearray) -> bool:
    """Append what can be read from ``fd`` without waiting; True at end of file."""
    while True:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return False
        if not data:
            return True
        buffer += data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(writer: Writer, fd_in: int, fd_out: int) -> None:
    """Commit what arrives on ``fd_in`` until it closes; answer on ``fd_out``."""
    os.set_blocking(fd_in, False)
    buffer = bytearray()
    at_end = False
    while True:
        frames = take_frames(buffer)
        if not frames:
            if at_end:
                return
            readable, _, _ = select.select([fd_in], [], [], _IDLE_WAIT)
            if readable:
                at_end = _read_available(fd_in, buffer)
            else:  # idle: a good moment to restart the WAL if the checkpointer asked
                writer.reset_wal_if_asked()
            continue
        # Whatever arrived during the previous commit joins this one (group commit), and
        # so does what arrives while another writer holds the lock.
        at_end = _read_available(fd_in, buffer) or at_end
        frames += take_frames(buffer)
        appends = [append for data in frames for append in decode_batch(data)]

        def arrived() -> list[AppendMessage]:
            nonlocal at_end
            at_end = _read_available(fd_in, buffer) or at_end
            return [append for data in take_frames(buffer) for append in decode_batch(data)]

        _write_all(fd_out, frame(writer.commit(appends, arrived)))
        writer.reset_wal_if_asked()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qlevents.store.sqlite_writer",
        description="The SQLite store's writer process (started by qlevents serve).",
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL", "EXTRA"])
    parser.add_argument("--wal-reset-pages", type=int, default=WAL_RESET_PAGES)
    parser.add_argument("--busy-timeout-ms", type=int, default=5000)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The answers go to a private copy of stdout; fd 1 becomes stderr, so that nothing
    # printed by accident can break the protocol.
    fd_out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    writer = Writer(
        args.path,
        synchronous=args.synchronous,
        wal_reset_pages=args.wal_reset_pages,
        busy_timeout_ms=args.busy_timeout_ms,
    )
    try:
        writer.open()
    except SchemaVersionError as exc:
        _write_all(fd_out, frame(Started(error=str(exc))))
        return 1
    except (sqlite3.Error, OSError) as exc:
        _write_all(fd_out, frame(Started(error=f"cannot open {args.path}: {exc}")))
        return 1
    try:
        _write_all(fd_out, frame(Started()))
        serve(writer, sys.stdin.fileno(), fd_out)
    except BrokenPipeError:
        return 0  # the server is gone: nobody is waiting for answers any more
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
