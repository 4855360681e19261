"""The embedded event store: SQLite in WAL mode, fsync'd, with group commit.

Writes go to a writer process (:mod:`qlevents.store.sqlite_writer`, which says why a
process): ``append`` queues the request's events; the appends of one event-loop iteration
go to the writer in one frame; the writer commits everything that arrived while its
previous commit ran in one transaction (one fsync for all of them), then answers, and each
``append`` returns only once its own events are on disk (``synchronous=FULL``).

If the writer process dies, the appends it had not answered fail with
:class:`~qlevents.StoreUnavailableError` (the API answers 503, and a client retrying with
its Idempotency-Key cannot store twice) and a new writer is started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import itertools
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final

from qlevents._exceptions import StoreUnavailableError
from qlevents.events import StoredEvent
from qlevents.sqlite_schema import check_readable
from qlevents.store.base import (
    IDEMPOTENCY_TTL,
    CommitObserver,
    CommitStats,
    EventStore,
    IdempotencyRecord,
    Pruned,
    Replay,
)
from qlevents.store.sqlite_db import COLUMNS, MIGRATIONS, connect, insert_values, row_event
from qlevents.store.sqlite_writer import (
    HEADER,
    WAL_RESET_PAGES,
    AppendMessage,
    Committed,
    Started,
    decode_reply,
    frame,
)

#: How long after a commit failed for space or I/O the store reports itself unwritable
#: (seconds): a probe that writes nothing passes while commits that need space fail. (A lock
#: held elsewhere is different: the probe sees it.)
_FAILURE_MEMORY: Final = 10.0
#: How long close() waits for the writer to commit what it was given and exit (seconds).
_CLOSE_TIMEOUT: Final = 60.0
#: The pipes' buffer size (bytes; Linux caps it at /proc/sys/fs/pipe-max-size).
_PIPE_BYTES: Final = 8 << 20
_F_SETPIPE_SZ: Final = 1031
#: Events that make the appends waiting for the end of an event-loop iteration go to the
#: writer at once: a few large requests are enough to start a commit with.
_FLUSH_EVENTS: Final = 256
#: How often a store with a retention period prunes (seconds).
_RETENTION_INTERVAL: Final = 3600.0
#: Rows one prune transaction deletes at most (the writer's commits wait for one of them).
_PRUNE_ROWS: Final = 5000
#: Waits between attempts to start a new writer after one died (seconds).
_RESTART_DELAYS: Final = (0.1, 0.5, 1.0, 2.0, 5.0)

log: Final = logging.getLogger("qlevents.store")


class _Waiting:
    __slots__ = ("count", "future", "seq")

    def __init__(self, seq: int, count: int, future: asyncio.Future[Replay | None]) -> None:
        self.seq, self.count, self.future = seq, count, future


class SQLiteEventStore(EventStore):
    """Events in ``<path>``; every acknowledged append is fsync'd (WAL, synchronous=FULL)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        max_pending_events: int = 200_000,
        observer: CommitObserver | None = None,
        wal_reset_pages: int = WAL_RESET_PAGES,
        busy_timeout_ms: int = 5000,
        read_only: bool = False,
        retain_seconds: float = 0.0,
    ) -> None:
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        #: Only reads (the CLI's export): open() starts no writer and creates nothing.
        self.read_only = read_only
        self._synchronous = synchronous.upper()
        self._max_pending_events = max_pending_events
        self._observer = observer
        self._wal_reset_pages = wal_reset_pages
        self._busy_timeout_ms = busy_timeout_ms
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._requests: asyncio.WriteTransport | None = None
        self._replies: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._closing = False
        self._next_seq = 1
        self._outbox: list[AppendMessage] = []
        self._outbox_events = 0
        self._flush_scheduled = False
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._pending_events = 0
        self._last_failure: tuple[float, str] | None = None
        #: Events older than this are pruned every :data:`_RETENTION_INTERVAL` (0: kept).
        self._retain_seconds = retain_seconds
        self._retention: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = False
        if not self.read_only:
            await self._start_writer()
            if self._retain_seconds > 0:
                self._retention = asyncio.create_task(self._retain(), name="qlevents-retention")

    async def _start_writer(self) -> None:
        loop = asyncio.get_running_loop()
        to_writer, from_writer = _Pipe(), _Pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "qlevents.store.sqlite_writer",
                str(self.path),
                "--synchronous",
                self._synchronous,
                "--wal-reset-pages",
                str(self._wal_reset_pages),
                "--busy-timeout-ms",
                str(self._busy_timeout_ms),
                stdin=to_writer.read_end,
                stdout=from_writer.write_end,
            )
        except BaseException:
            to_writer.close_write_end()
            from_writer.close_read_end()
            raise
        finally:
            to_writer.close_read_end()
            from_writer.close_write_end()
        try:
            replies = asyncio.StreamReader()
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(replies), from_writer.reader()
            )
            requests, _ = await loop.connect_write_pipe(asyncio.Protocol, to_writer.writer())
        except BaseException:
            process.kill()
            await process.wait()
            raise
        try:
            started = await _read_reply(replies)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            requests.close()
            code = await process.wait()
            raise StoreUnavailableError(
                f"the event store's writer process exited with status {code} on start"
            ) from exc
        except BaseException:  # cancelled by close(): this writer must not outlive the store
            requests.close()  # it exits at the end of its input
            await process.wait()
            raise
        if not isinstance(started, Started) or started.error is not None:
            requests.close()
            await process.wait()
            reason = started.error if isinstance(started, Started) else "a protocol error"
            raise StoreUnavailableError(f"the event store cannot be opened: {reason}")
        self._process, self._requests = process, requests
        self._replies = asyncio.create_task(self._read_replies(process, replies))

    async def close(self) -> None:
        self._closing = True
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
            self._retention = None
        restarting = self._restarting
        if restarting is not None and not restarting.done():
            # A dead writer's successor is on its way: stop it, whatever stage it is at.
            restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await restarting
        process, replies = self._process, self._replies
        if process is None or replies is None:
            return
        self._flush()
        assert self._requests is not None
        self._requests.close()  # the writer commits what it was given, answers, and exits
        try:
            await asyncio.wait_for(asyncio.shield(replies), _CLOSE_TIMEOUT)
        except TimeoutError:
            log.error("the store's writer did not finish in %.0f s; killing it", _CLOSE_TIMEOUT)
            process.kill()
            await replies

    # --- writes: group commit in the writer process --------------------------------------

    async def append(
        self, events: Sequence[StoredEvent], idempotency: IdempotencyRecord | None = None
    ) -> Replay | None:
        if self._process is None or self._loop is None or self._closing:
            raise StoreUnavailableError("the event store is not open")
        if self._pending_events + len(events) > self._max_pending_events:
            raise StoreUnavailableError(
                f"the store's writer is behind ({self._pending_events} events waiting)"
            )
        seq = self._next_seq
        self._next_seq += 1
        if idempotency is None:
            message = AppendMessage(seq, insert_values(events))
        else:
            message = AppendMessage(
                seq,
                insert_values(events),
                idempotency.scope,
                idempotency.key,
                idempotency.fingerprint,
                idempotency.response,
            )
        future: asyncio.Future[Replay | None] = self._loop.create_future()
        self._waiting.append(_Waiting(seq, len(events), future))
        self._pending_events += len(events)
        self._outbox.append(message)
        self._outbox_events += len(events)
        if len(self._waiting) == len(self._outbox) or self._outbox_events >= _FLUSH_EVENTS:
            # The writer is idle (it has nothing unanswered): give it this at once. Or
            # enough has piled up to keep it busy while this iteration goes on.
            self._flush()
        elif not self._flush_scheduled:
            # Otherwise what this event-loop iteration appends goes out in one frame.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox or self._process is None:
            return
        outbox, self._outbox = self._outbox, []
        self._outbox_events = 0
        assert self._requests is not None
        self._requests.write(frame(outbox))

    async def _read_replies(
        self, process: asyncio.subprocess.Process, replies: asyncio.StreamReader
    ) -> None:
        try:
            while True:
                reply = await _read_reply(replies)
                if isinstance(reply, Committed):
                    self._answer(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the writer exited
        code = await process.wait()
        if self._process is process:
            self._process = None
            if self._requests is not None:
                self._requests.close()
                self._requests = None
        self._outbox.clear()
        self._outbox_events = 0
        self._fail_waiting(f"the event store's writer process exited with status {code}")
        if not self._closing:
            log.error("the event store's writer exited with status %s; starting another", code)
            self._restarting = asyncio.get_running_loop().create_task(self._restart())

    def _answer(self, reply: Committed) -> None:
        if reply.error is not None and reply.failure:
            self._last_failure = (time.monotonic(), reply.error)
        elif reply.error is None:
            self._last_failure = None
        waiting = self._waiting
        while waiting and waiting[0].seq <= reply.upto:
            entry = waiting.popleft()
            self._pending_events -= entry.count
            if entry.future.done():  # the caller went away (cancelled)
                continue
            if reply.error is not None:
                entry.future.set_exception(StoreUnavailableError(reply.error))
            elif entry.seq in reply.replays:
                fingerprint, response = reply.replays[entry.seq]
                entry.future.set_result(Replay(fingerprint, response))
            else:
                entry.future.set_result(None)
        if reply.error is None and self._observer is not None:
            self._observer(CommitStats(reply.requests, reply.events, reply.seconds))

    def _fail_waiting(self, reason: str) -> None:
        while self._waiting:
            entry = self._waiting.popleft()
            self._pending_events -= entry.count
            if not entry.future.done():
                entry.future.set_exception(StoreUnavailableError(reason))

    async def _restart(self) -> None:
        for attempt in itertools.count():
            await asyncio.sleep(_RESTART_DELAYS[min(attempt, len(_RESTART_DELAYS) - 1)])
            if self._closing or self._process is not None:
                return
            try:
                await self._start_writer()
            except (StoreUnavailableError, OSError) as exc:
                log.error("starting the event store's writer failed: %s; will retry", exc)
                continue
            log.info("the event store's writer is back")
            return

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
            check_readable(conn, f"the event store {self.path}", len(MIGRATIONS))
            if client_key is None:
                rows = conn.execute(
                    f"SELECT {COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                    (after, limit),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {COLUMNS} FROM events WHERE client_key = ? AND position > ?"
                    " ORDER BY position LIMIT ?",
                    (client_key, after, limit),
                ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()
        return [(row[0], row_event(row)) for row in rows]

    async def find_replay(self, scope: str, key: str) -> Replay | None:
        return await asyncio.to_thread(self._find_replay_sync, scope, key)

    def _find_replay_sync(self, scope: str, key: str) -> Replay | None:
        if not self.path.exists():
            return None
        try:
            conn = connect(self.path, readonly=True)
            try:
                row = conn.execute(
                    "SELECT fingerprint, response, created_at FROM idempotency"
                    " WHERE scope = ? AND key = ?",
                    (scope, key),
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return None  # not knowing is safe: the caller refuses the request as it would have
        if row is None or time.time() - row[2] >= IDEMPOTENCY_TTL:
            return None
        return Replay(bytes(row[0]), bytes(row[1]))

    async def prune(self, received_before: str) -> Pruned:
        return await asyncio.to_thread(self.prune_sync, received_before)

    async def _retain(self) -> None:
        """Prune what is older than the retention period, now and then every interval."""
        while True:
            cutoff = datetime.fromtimestamp(time.time() - self._retain_seconds, UTC)
            try:
                pruned = await self.prune(cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            except StoreUnavailableError as exc:
                log.warning("retention: %s; will try again", exc)
            else:
                if pruned.events:
                    log.info(
                        "retention: pruned %d events received before %s (%s bytes freed)",
                        pruned.events,
                        cutoff.isoformat(),
                        pruned.bytes_freed,
                    )
            await asyncio.sleep(_RETENTION_INTERVAL)

    def prune_sync(self, received_before: str, *, vacuum: bool = False) -> Pruned:
        """``prune`` beside a running writer: short transactions of :data:`_PRUNE_ROWS` rows,
        so commits wait at most one of them. ``vacuum``: rewrite the file afterwards (gives
        a 0.1.0 file's space back; writes wait for the whole rewrite)."""
        if not self.path.exists():
            return Pruned(events=0, through=0, bytes_freed=0)
        size_before = _file_bytes(self.path)
        conn = connect(self.path, busy_timeout_ms=self._busy_timeout_ms)
        deleted = through = 0
        try:
            check_readable(conn, f"the event store {self.path}", len(MIGRATIONS))
            while True:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # The newest request stays, whatever its age: SQLite gives a new row the
                    # largest position + 1, so an empty table would hand out 1 again. (A
                    # request's events share their receipt time.)
                    newest = conn.execute(
                        "SELECT received_at FROM events ORDER BY position DESC LIMIT 1"
                    ).fetchone()
                    rows = conn.execute(
                        "SELECT position, received_at FROM events WHERE position > ?"
                        " ORDER BY position LIMIT ?",
                        (through, _PRUNE_ROWS),
                    ).fetchall()
                    old = 0
                    while (
                        old < len(rows)
                        and rows[old][1] < received_before
                        and rows[old][1] != newest[0]
                    ):
                        old += 1
                    if old:
                        conn.execute("DELETE FROM events WHERE position <= ?", (rows[old - 1][0],))
                        through = rows[old - 1][0]
                        deleted += old
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                if old < len(rows) or not rows:
                    break
            # Hand the freed pages back to the file system (a file made with auto_vacuum), a
            # few MB per transaction. (executescript: execute() would move only one page.)
            (incremental,) = conn.execute("PRAGMA auto_vacuum").fetchone()
            while incremental and conn.execute("PRAGMA freelist_count").fetchone()[0]:
                conn.executescript(f"PRAGMA incremental_vacuum({_PRUNE_ROWS});")
            if vacuum:
                conn.execute("VACUUM")
            # Passive: the file shrinks once the WAL is copied back; never wait for the writer.
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"pruning the event store failed: {exc}") from exc
        finally:
            conn.close()
        return Pruned(deleted, through, max(0, size_before - _file_bytes(self.path)))

    async def check_writable(self) -> None:
        if self._process is None:
            raise StoreUnavailableError("the event store is not open")
        failure = self._last_failure
        if failure is not None and time.monotonic() - failure[0] < _FAILURE_MEMORY:
            raise StoreUnavailableError(f"the last commit failed: {failure[1]}")
        await asyncio.to_thread(self._check_writable_sync)

    def _check_writable_sync(self) -> None:
        # A connection of its own: taking the write lock for an instant proves the disk and
        # the lock are available.
        try:
            conn = connect(self.path, busy_timeout_ms=min(self._busy_timeout_ms, 1000))
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"the event store cannot take writes: {exc}") from exc


def _file_bytes(path: Path) -> int:
    """The database file's size with its WAL."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


class _Pipe:
    """A pipe to or from the writer, with a buffer big enough for a whole group of appends.

    The default (64 KiB) holds about three 100-event requests: a larger group went over
    in many turns, each waiting for the busy event loop to see the pipe writable again.
    """

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        try:
            with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as limit:
                size = min(int(limit.read()), _PIPE_BYTES)
            fcntl.fcntl(self.write_end, _F_SETPIPE_SZ, size)
        except (OSError, ValueError):
            pass  # not Linux, or not allowed: the default buffer works, only slower

    def close_read_end(self) -> None:
        os.close(self.read_end)

    def close_write_end(self) -> None:
        os.close(self.write_end)

    def reader(self) -> BinaryIO:
        return os.fdopen(self.read_end, "rb", buffering=0)

    def writer(self) -> BinaryIO:
        return os.fdopen(self.write_end, "wb", buffering=0)


async def _read_reply(stream: asyncio.StreamReader) -> Started | Committed:
    (size,) = HEADER.unpack(await stream.readexactly(HEADER.size))
    reply: Started | Committed = decode_reply(await stream.readexactly(size))
    return reply
