"""Online backup and restore: consistent under write load, checked before anything is replaced."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from qlevents.backup import DATABASES, MANIFEST, BackupError, backup, restore
from qlevents.store.sqlite import SQLiteEventStore
from tests.support import RunningServer, view


def test_a_backup_under_write_load_holds_every_event_acknowledged_before_it_began(
    serve: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Clients keep writing during the backup; the restored copy has every event that was
    acknowledged before the backup started, and its accounts."""
    server = serve()
    key = server.client_key
    acknowledged: list[str] = []  # event ids, in the order their requests were answered
    lock = threading.Lock()
    stop = threading.Event()

    def write(worker: int) -> None:
        with httpx.Client(timeout=10) as client:
            sent = 0
            while not stop.is_set():
                body = [view(key, product_id=f"w{worker}-{sent}-{i}") for i in range(20)]
                answer = client.post(server.events_url, json=body)
                assert answer.status_code == 200
                with lock:
                    acknowledged.extend(e["id"] for e in answer.json()["processed"])
                sent += 1

    writers = [threading.Thread(target=write, args=(n,)) for n in range(3)]
    for thread in writers:
        thread.start()
    try:
        while len(acknowledged) < 2000:  # let the load build up
            stop.wait(0.05)
        with lock:
            before = list(acknowledged)
        copied = backup(server.data_dir, tmp_path / "backup")
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    assert {c.name for c in copied} >= {"events.sqlite3", "accounts.sqlite3"}

    restored = tmp_path / "restored"
    restore(tmp_path / "backup", restored)
    events = SQLiteEventStore(restored / "events.sqlite3", read_only=True).read_sync(limit=10**7)
    ids = {e.id for _, e in events}
    assert not set(before) - ids, "an event acknowledged before the backup is missing"
    assert len(ids) == len(events), "the copy holds an event twice"
    with sqlite3.connect(restored / "accounts.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM accounts WHERE client_key = ?", (key,)).fetchone()


def test_a_backup_needs_a_data_directory_and_a_new_destination(tmp_path: Path) -> None:
    """Nothing to copy, or a destination in use: refused before anything is written."""
    with pytest.raises(BackupError, match="no data directory"):
        backup(tmp_path / "missing", tmp_path / "b")
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "accounts.sqlite3").close()
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    with pytest.raises(BackupError, match="not empty"):
        backup(data, used)


class TestRestore:
    @pytest.fixture
    def made(self, tmp_path: Path) -> Path:
        data = tmp_path / "data"
        data.mkdir()
        for name in DATABASES[:1] + DATABASES[2:]:
            with sqlite3.connect(data / name) as conn:
                conn.execute("CREATE TABLE t (x)")
        backup(data, tmp_path / "backup")
        return tmp_path / "backup"

    def test_refuses_to_replace_a_data_directory_in_use_unless_forced(
        self, made: Path, tmp_path: Path
    ) -> None:
        """Restoring over existing databases needs --force; forced, the WAL is not replayed."""
        target = tmp_path / "data"
        with pytest.raises(BackupError, match="already holds"):
            restore(made, target)
        (target / "events.sqlite3-wal").write_bytes(b"stale")
        assert restore(made, target, force=True) == ["events.sqlite3", "accounts.sqlite3"]
        assert not (target / "events.sqlite3-wal").exists()

    def test_refuses_what_is_not_a_backup(self, tmp_path: Path) -> None:
        """A directory without a manifest is not restored from."""
        with pytest.raises(BackupError, match="not a qlevents backup"):
            restore(tmp_path, tmp_path / "data")

    def test_refuses_a_backup_missing_a_file(self, made: Path, tmp_path: Path) -> None:
        """A manifest naming a file that is not there: refused, nothing replaced."""
        (made / "events.sqlite3").unlink()
        with pytest.raises(BackupError, match=r"lacks events\.sqlite3"):
            restore(made, tmp_path / "new")
        assert not (tmp_path / "new").exists()
        assert (made / MANIFEST).exists()
