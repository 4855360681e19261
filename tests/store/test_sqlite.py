"""The SQLite store: group commit, its writer process, locks, the WAL, faults."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import msgspec
import pytest

from qlevents import StoreUnavailableError
from qlevents.events import StoredEvent
from qlevents.store.base import CommitStats, Replay
from qlevents.store.sqlite import SQLiteEventStore
from qlevents.store.sqlite_db import insert_values, row_values
from qlevents.store.sqlite_writer import (
    LOCK_POLL_FIRST,
    LOCK_POLL_MAX,
    RESTART_BACKOFF_FIRST,
    RESTART_WARN_AFTER,
    AppendMessage,
    Writer,
)
from tests.store.events import record, stored
from tests.support import child_pids

pytestmark = pytest.mark.anyio


def at(received_at: str, events: list[StoredEvent]) -> list[StoredEvent]:
    """``events`` as if received at ``received_at``."""
    return [msgspec.structs.replace(e, received_at=received_at) for e in events]


def row_values_text(event: StoredEvent) -> str:
    """Roughly what a row costs in the WAL: its values as text."""
    return "".join(str(value) for value in row_values(event))


class TestSQLiteGroupCommit:
    async def test_concurrent_appends_share_commits(self, tmp_path: Path) -> None:
        """Appends that arrive while a commit runs go into the next one (group commit)."""
        commits: list[CommitStats] = []
        store = SQLiteEventStore(tmp_path / "e.db", observer=commits.append)
        await store.open()
        try:
            await asyncio.gather(*(store.append(stored(2, prefix=f"r{i}-")) for i in range(200)))
            assert len(await store.read(limit=10_000)) == 400
        finally:
            await store.close()
        assert sum(c.requests for c in commits) == 200
        assert sum(c.events for c in commits) == 400
        assert len(commits) < 200

    async def test_events_survive_reopening(self, tmp_path: Path) -> None:
        """What an append acknowledged is there after the store is closed and reopened."""
        path = tmp_path / "e.db"
        store = SQLiteEventStore(path)
        await store.open()
        await store.append(stored(3))
        await store.close()
        again = SQLiteEventStore(path)
        assert len(again.read_sync()) == 3
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()

    async def test_close_finishes_pending_appends(self, tmp_path: Path) -> None:
        """close() waits for queued appends to commit; none is lost."""
        store = SQLiteEventStore(tmp_path / "e.db")
        await store.open()
        pending = [asyncio.create_task(store.append(stored(1, prefix=f"c{i}-"))) for i in range(50)]
        await asyncio.sleep(0)
        await store.close()
        await asyncio.gather(*pending)
        assert len(SQLiteEventStore(tmp_path / "e.db").read_sync()) == 50

    async def test_locked_database_is_unavailable_and_stores_nothing(self, tmp_path: Path) -> None:
        """While another process holds the write lock, append raises StoreUnavailableError."""
        path = tmp_path / "e.db"
        store = SQLiteEventStore(path, busy_timeout_ms=50)
        await store.open()
        blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailableError):
                await store.append(stored(2))
            with pytest.raises(StoreUnavailableError):
                await store.check_writable()
            blocker.execute("ROLLBACK")
            await store.append(stored(1, prefix="after"))
            assert [e.id for _, e in await store.read()] == ["after0"]
        finally:
            blocker.close()
            await store.close()

    async def test_overload_is_refused_up_front(self, tmp_path: Path) -> None:
        """Past max_pending_events the store refuses at once instead of queueing more."""
        store = SQLiteEventStore(tmp_path / "e.db", max_pending_events=10)
        await store.open()
        try:
            results = await asyncio.gather(
                *(store.append(stored(4, prefix=f"o{i}-")) for i in range(10)),
                return_exceptions=True,
            )
            refused = [r for r in results if isinstance(r, StoreUnavailableError)]
            assert refused, "some appends should have been refused"
            assert len(await store.read(limit=1000)) == 4 * (10 - len(refused))
        finally:
            await store.close()

    @pytest.mark.parametrize("pause", [0.02, 0.0], ids=["spaced", "back-to-back"])
    async def test_checkpointer_keeps_the_wal_bounded(self, tmp_path: Path, pause: float) -> None:
        """Under constant appends the WAL does not grow with the data: spaced out, the passive
        checkpoints catch up and SQLite starts the WAL over; back to back, the writer restarts
        it past its size limit and cuts the file back."""
        path = tmp_path / "e.db"
        wal = tmp_path / "e.db-wal"
        store = SQLiteEventStore(path, wal_reset_pages=50)
        await store.open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5  # long enough for many checkpoints
        sizes: list[int] = []
        try:
            while loop.time() < deadline or len(sizes) < 60:
                i = len(sizes)
                await asyncio.gather(
                    *(store.append(stored(50, prefix=f"w{i}-{j}-")) for j in range(2))
                )
                sizes.append(wal.stat().st_size)
                await asyncio.sleep(pause)
            assert len(await store.read(limit=1_000_000)) == 100 * len(sizes)
        finally:
            await store.close()
        written = sum(len(row_values_text(e)) for e in stored(100)) * len(sizes)
        assert max(sizes) < written / 2, f"{written} bytes written: {sizes}"
        if pause == 0:
            assert any(b < a for a, b in itertools.pairwise(sizes)), sizes

    async def test_the_last_commit_reaches_the_database_file_when_idle(
        self, tmp_path: Path
    ) -> None:
        """The checkpointer runs after commits, not on a timer: the last commit before a
        pause must still be copied out of the WAL into the database file."""
        path = tmp_path / "e.db"
        store = SQLiteEventStore(path)
        await store.open()
        try:
            await store.append(stored(3))
            await asyncio.sleep(0.3)  # a passive checkpoint follows the commit after ~5 ms
            await store.append(stored(4, prefix="last"))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            in_file = 0
            while loop.time() < deadline:
                snapshot = tmp_path / f"snapshot-{loop.time()}.db"  # the file without its WAL
                snapshot.write_bytes(path.read_bytes())
                conn = sqlite3.connect(snapshot)
                try:
                    in_file = conn.execute("SELECT count(*) FROM events").fetchone()[0]
                except sqlite3.OperationalError:  # not even the table is in the file yet
                    in_file = 0
                finally:
                    conn.close()
                if in_file == 7:
                    break
                await asyncio.sleep(0.05)
            assert in_file == 7
        finally:
            await store.close()

    def test_rejects_unknown_synchronous_mode(self, tmp_path: Path) -> None:
        """Only durable synchronous modes are accepted."""
        with pytest.raises(ValueError, match="synchronous"):
            SQLiteEventStore(tmp_path / "e.db", synchronous="OFF")


class TestSQLiteWriterProcess:
    """The commits happen in a writer process: what its life means for appends."""

    @staticmethod
    def writer_pid(store: SQLiteEventStore) -> int:
        assert store._process is not None
        return store._process.pid

    @staticmethod
    async def until_restarted(store: SQLiteEventStore, old_pid: int) -> None:
        deadline = asyncio.get_running_loop().time() + 20
        while store._process is None or store._process.pid == old_pid:
            assert asyncio.get_running_loop().time() < deadline, "no new writer was started"
            await asyncio.sleep(0.02)

    async def test_a_dead_writer_fails_its_appends_and_is_replaced(self, tmp_path: Path) -> None:
        """Appends the writer had not answered fail (nothing half-stored); a new writer takes
        the next ones, and everything acknowledged before is still there."""
        store = SQLiteEventStore(tmp_path / "e.db")
        await store.open()
        try:
            await store.append(stored(3, prefix="before"))
            pid = self.writer_pid(store)
            os.kill(pid, signal.SIGSTOP)  # hold it mid-way, so these appends are in flight
            pending = [
                asyncio.create_task(store.append(stored(2, prefix=f"p{i}-"))) for i in range(5)
            ]
            await asyncio.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
            results = await asyncio.gather(*pending, return_exceptions=True)
            assert all(isinstance(r, StoreUnavailableError) for r in results), results
            assert "exited" in str(results[0])
            await self.until_restarted(store, pid)
            assert await store.append(stored(1, prefix="after")) is None
            ids = [e.id for _, e in await store.read()]
            assert ids == ["before0", "before1", "before2", "after0"]
        finally:
            await store.close()

    async def test_the_writer_ignores_sigterm_and_sigint(self, tmp_path: Path) -> None:
        """A signal to the whole process group stops the server, which then closes the store;
        the writer itself keeps committing until then."""
        store = SQLiteEventStore(tmp_path / "e.db")
        await store.open()
        try:
            pid = self.writer_pid(store)
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
            await asyncio.sleep(0.2)
            assert await store.append(stored(2)) is None
            assert self.writer_pid(store) == pid
        finally:
            await store.close()

    async def test_close_ends_the_writer(self, tmp_path: Path) -> None:
        """close() leaves no writer process behind, and appends after it are refused."""
        store = SQLiteEventStore(tmp_path / "e.db")
        await store.open()
        process = store._process
        assert process is not None
        await store.close()
        assert process.returncode == 0
        with pytest.raises(StoreUnavailableError):
            await store.append(stored(1))

    async def test_close_while_a_new_writer_starts_ends_that_writer(self, tmp_path: Path) -> None:
        """close() landing while a dead writer's successor is starting up: the successor
        must not outlive the store."""
        # Processes this test did not start (a server shared by the session) are not its own.
        others = set(child_pids(os.getpid()))

        def writers() -> list[int]:
            return [pid for pid in child_pids(os.getpid()) if pid not in others]

        store = SQLiteEventStore(tmp_path / "e.db")
        await store.open()
        old = self.writer_pid(store)
        os.kill(old, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not [pid for pid in writers() if pid != old]:
            assert loop.time() < deadline, "no new writer was started"
            await asyncio.sleep(0.001)
        assert store._process is None or store._process.pid == old  # still starting up
        await store.close()
        deadline = loop.time() + 10
        while writers():
            assert loop.time() < deadline, f"writers left: {writers()}"
            await asyncio.sleep(0.02)

    def test_an_append_of_broken_rows_fails_alone(self, tmp_path: Path) -> None:
        """The writer takes the rows' values flat from the server; values that are not whole
        rows fail their commit (nothing stored) instead of shifting columns."""
        writer = Writer(tmp_path / "e.db", synchronous="FULL", wal_reset_pages=4096,
                        busy_timeout_ms=1000)  # fmt: skip
        writer.open()
        try:
            good = insert_values(stored(2))
            broken = writer.commit([AppendMessage(1, good), AppendMessage(2, good[:-1])])
            assert broken.error is not None and "not whole rows" in broken.error
            assert writer.commit([AppendMessage(3, good)]).error is None
            assert writer.conn is not None
            assert writer.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
        finally:
            writer.close()

    def test_a_writer_polls_for_another_writers_lock_in_short_pauses(self, tmp_path: Path) -> None:
        """With --workers N each worker has a writer process. One that finds the write lock
        taken tries again after pauses of LOCK_POLL_FIRST, doubling up to LOCK_POLL_MAX
        (SQLite's own busy handler sleeps up to 100 ms between tries), and stores its
        events once the lock is free."""
        path = tmp_path / "e.db"
        writer = Writer(path, synchronous="FULL", wal_reset_pages=4096, busy_timeout_ms=5000)
        writer.open()
        holder = sqlite3.connect(path, isolation_level=None)
        pauses: list[float] = []

        def sleep(seconds: float) -> None:
            pauses.append(seconds)
            if len(pauses) % 8 == 0:
                holder.execute("ROLLBACK")  # the other writer's commit is done

        writer.sleep = sleep
        late = [AppendMessage(2, insert_values(stored(2, prefix="late")))]
        try:
            holder.execute("BEGIN IMMEDIATE")
            # What reaches the writer while it waits joins the group: one commit for both.
            first = writer.commit(
                [AppendMessage(1, insert_values(stored(3)))], lambda: [late.pop()] if late else []
            )
            assert (first.error, first.upto, first.requests, first.events) == (None, 2, 2, 5)
            key = record(key="k-1")
            with_key = AppendMessage(3, insert_values(stored(1, prefix="k")), scope=key.scope,
                                     key=key.key, fingerprint=key.fingerprint,
                                     response=key.response)  # fmt: skip
            holder.execute("BEGIN IMMEDIATE")  # the transaction path (BEGIN IMMEDIATE) too
            assert writer.commit([with_key]).error is None
        finally:
            holder.close()
            writer.close()
        doubling = [LOCK_POLL_FIRST * 2**i for i in range(4)] + [LOCK_POLL_MAX] * 4
        assert pauses == doubling * 2  # each commit starts again from the shortest pause
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 6
        assert conn.execute("SELECT count(*) FROM idempotency").fetchone()[0] == 1
        conn.close()

    def test_a_writer_gives_up_on_a_held_lock_at_the_busy_timeout(self, tmp_path: Path) -> None:
        """Polling ends at the busy timeout: the commit fails as busy (not as a failure of
        the disk), stores nothing, and the next commit goes through once the lock is free."""
        path = tmp_path / "e.db"
        writer = Writer(path, synchronous="FULL", wal_reset_pages=4096, busy_timeout_ms=30)
        writer.open()
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            refused = writer.commit([AppendMessage(1, insert_values(stored(2)))])
            assert refused.error is not None and "locked" in refused.error
            assert not refused.failure
            holder.execute("ROLLBACK")
            writer._reset_wal.set()  # a WAL restart waits a little (RESTART_WAIT_MS), then not
            writer.reset_wal_if_asked()
            assert writer.conn is not None
            assert writer.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
            assert writer.commit([AppendMessage(2, insert_values(stored(1)))]).error is None
            assert writer.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
        finally:
            holder.close()
            writer.close()

    def test_a_writer_opening_a_locked_new_database_tries_again(self, tmp_path: Path) -> None:
        """Two writers creating one database (--workers N, a new data directory) can get
        "database is locked" at once, without SQLite's busy wait: open() tries again."""
        writer = Writer(tmp_path / "e.db", synchronous="FULL", wal_reset_pages=4096,
                        busy_timeout_ms=5000)  # fmt: skip
        set_up = writer._set_up
        tries: list[float] = []

        def locked_twice(conn: sqlite3.Connection) -> None:
            if len(tries) < 2:
                error = sqlite3.OperationalError("database is locked")
                error.sqlite_errorcode = 5  # type: ignore[attr-defined]
                raise error
            set_up(conn)

        writer._set_up = locked_twice  # type: ignore[method-assign]
        writer.sleep = tries.append
        writer.open()
        try:
            assert tries == [LOCK_POLL_FIRST, LOCK_POLL_FIRST * 2]
            assert writer.commit([AppendMessage(1, insert_values(stored(1)))]).error is None
        finally:
            writer.close()

    async def test_two_stores_opening_a_new_file_at_once_both_open(self, tmp_path: Path) -> None:
        """The race itself: two writer processes creating the same new database (before
        the fix, ~1 open in 20 failed with "database is locked")."""
        for attempt in range(15):
            path = tmp_path / f"e{attempt}.db"
            stores = [SQLiteEventStore(path), SQLiteEventStore(path)]
            opened = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
            for store, result in zip(stores, opened, strict=True):
                if not isinstance(result, BaseException):
                    await store.close()
            assert [r for r in opened if isinstance(r, BaseException)] == []

    def test_a_reader_on_an_old_snapshot_does_not_hold_the_writer(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A WAL restart must wait for readers still on an older snapshot (a backup, an
        operator's query). It gives up after RESTART_WAIT_MS instead of the 5 s busy timeout,
        backs off, warns once a restart has failed for RESTART_WARN_AFTER, and restarts the
        WAL once the reader is done."""
        path = tmp_path / "e.db"
        writer = Writer(path, synchronous="FULL", wal_reset_pages=4096, busy_timeout_ms=5000)
        writer.open()
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        try:
            assert writer.commit([AppendMessage(1, insert_values(stored(5)))]).error is None
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 5
            assert writer.commit([AppendMessage(2, insert_values(stored(5)))]).error is None

            writer._restart_failing_since = time.monotonic() - RESTART_WARN_AFTER - 1
            writer._reset_wal.set()
            before = time.monotonic()
            with caplog.at_level("WARNING", logger="qlevents.store"):
                writer.reset_wal_if_asked()
            assert writer._reset_wal.is_set(), "the restart is still wanted"
            assert writer._next_restart >= before + RESTART_BACKOFF_FIRST
            assert writer._restart_backoff == RESTART_BACKOFF_FIRST * 2
            assert any("could not be restarted" in r.message for r in caplog.records)
            writer._next_restart = time.monotonic() + 60  # within the back-off:
            writer.reset_wal_if_asked()  # not tried again
            assert writer._restart_backoff == RESTART_BACKOFF_FIRST * 2
            assert writer.commit([AppendMessage(3, insert_values(stored(5)))]).error is None

            reader.execute("COMMIT")
            writer._next_restart = 0.0  # the back-off is over
            writer.reset_wal_if_asked()
            assert not writer._reset_wal.is_set()
            assert writer._restart_backoff == RESTART_BACKOFF_FIRST
            assert writer.conn is not None
            # Restarted: the next commit writes the WAL from its start.
            assert writer.commit([AppendMessage(4, insert_values(stored(1)))]).error is None
            # -1: the checkpoint could not run (busy: the store's checkpointer was at it).
            for _ in range(100):
                _, wal_frames, _ = writer.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if wal_frames != -1:
                    break
                time.sleep(0.01)
            assert 0 < wal_frames < 10
            assert writer.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 16
        finally:
            reader.close()
            writer.close()

    async def test_two_stores_on_one_file_both_store_everything(self, tmp_path: Path) -> None:
        """Two workers: two stores (two writer processes) appending to one database at once."""
        path = tmp_path / "e.db"
        first, second = SQLiteEventStore(path), SQLiteEventStore(path)
        await first.open()
        await second.open()
        try:
            await asyncio.gather(
                *(
                    store.append(stored(5, prefix=f"{name}{i}-"))
                    for i in range(100)
                    for name, store in (("a", first), ("b", second))
                )
            )
        finally:
            await first.close()
            await second.close()
        ids = [e.id for _, e in SQLiteEventStore(path).read_sync()]
        assert len(ids) == len(set(ids)) == 1000

    def test_close_is_not_lost_on_the_checkpointer(self, tmp_path: Path) -> None:
        """close() wakes the checkpointer through the event that commits set. If close()
        lands just as the checkpointer clears that event after a commit, the wake-up is
        consumed: the checkpointer must still see that it is to stop, or close() (and the
        writer process, which ignores SIGTERM) hangs for ever."""
        writer = Writer(tmp_path / "e.db", synchronous="FULL", wal_reset_pages=4096,
                        busy_timeout_ms=1000)  # fmt: skip
        closing = threading.Event()

        class CloseLandsBeforeClear(threading.Event):
            def set(self) -> None:
                super().set()
                if writer._stop.is_set():
                    closing.set()

            def clear(self) -> None:
                closing.wait(5)  # the checkpointer clears only after close() woke it
                super().clear()

        writer._committed = CloseLandsBeforeClear()
        writer.open()
        assert writer.commit([AppendMessage(1, insert_values(stored(1)))]).error is None
        time.sleep(0.1)  # the checkpointer is now at clear(), waiting for close()
        closer = threading.Thread(target=writer.close, daemon=True)
        closer.start()
        closer.join(10)
        assert not closer.is_alive(), "close() hangs: the checkpointer missed its stop"

    async def test_a_store_that_cannot_be_opened_says_why(self, tmp_path: Path) -> None:
        """open() fails with the reason when the database cannot be created."""
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        store = SQLiteEventStore(blocker / "e.db")
        with pytest.raises(StoreUnavailableError, match="cannot be opened"):
            await store.open()

    async def test_many_large_appends_in_one_iteration(self, tmp_path: Path) -> None:
        """Far more than a pipe's default buffer in flight at once, mixed with keyed appends:
        all stored, in order, each key's replay answered."""
        store = SQLiteEventStore(tmp_path / "e.db")
        await store.open()
        try:
            first = await asyncio.gather(
                *(
                    store.append(stored(300, prefix=f"big{i}-"), record(key=f"k{i % 7}"))
                    for i in range(40)
                )
            )
            assert sum(r is None for r in first) == 7  # one per key; the others replayed
            assert all(r == Replay(b"f1", b"{}") for r in first if r is not None)
            assert len(await store.read(limit=100_000)) == 7 * 300
        finally:
            await store.close()


class TestSQLitePrune:
    async def test_prune_gives_the_space_back(self, tmp_path: Path) -> None:
        """A new file shrinks after a prune (auto_vacuum=INCREMENTAL)."""
        path = tmp_path / "e.db"
        store = SQLiteEventStore(path)
        await store.open()
        try:
            for n in range(20):
                await store.append(at(f"2026-01-{n + 1:02d}T00:00:00.000000Z", stored(500)))
        finally:
            await store.close()
        size = path.stat().st_size
        pruned = SQLiteEventStore(path).prune_sync("2099-01-01T00:00:00.000000Z")
        assert pruned.events == 9_500  # the newest request stays
        assert path.stat().st_size < size / 4
        assert len(SQLiteEventStore(path).read_sync()) == 500

    async def test_a_retention_period_prunes_old_events_at_open(self, tmp_path: Path) -> None:
        """With retain_seconds, events older than the period are pruned while serving."""
        path = tmp_path / "e.db"
        writer = SQLiteEventStore(path)
        await writer.open()
        await writer.append(at("2020-01-01T00:00:00.000000Z", stored(3, prefix="old")))
        await writer.append(at("2099-01-01T00:00:00.000000Z", stored(1, prefix="new")))
        await writer.close()
        store = SQLiteEventStore(path, retain_seconds=86_400)
        await store.open()
        try:
            for _ in range(1000):  # the prune at open runs in a thread: up to 20 s on a busy box
                if [e.id for _, e in await store.read()] == ["new0"]:
                    break
                await asyncio.sleep(0.02)
            assert [e.id for _, e in await store.read()] == ["new0"]
        finally:
            await store.close()
