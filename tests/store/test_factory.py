"""Choosing a store: the factory builds what --store names; read-only builds create nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlevents.settings import SettingsError
from qlevents.store.factory import SQLITE_FILE, StoreSettings, build_store
from qlevents.store.memory import MemoryEventStore
from qlevents.store.sqlite import SQLiteEventStore
from tests.store.events import stored

pytestmark = pytest.mark.anyio


def test_the_default_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    """No --store: the embedded store, in <data-dir>/events.sqlite3."""
    store = build_store(StoreSettings(), tmp_path)
    assert isinstance(store, SQLiteEventStore)
    assert store.path == tmp_path / SQLITE_FILE


def test_memory_is_a_memory_store(tmp_path: Path) -> None:
    """--store memory keeps nothing on disk."""
    assert isinstance(build_store(StoreSettings(store="memory"), tmp_path), MemoryEventStore)


def test_an_unknown_store_is_refused_by_name() -> None:
    """A typo in --store is an error that names the setting and the choices."""
    with pytest.raises(SettingsError, match="unknown store; use sqlite, memory or nats:"):
        StoreSettings(store="sqlit")


def test_reading_a_missing_store_says_so_and_creates_nothing(tmp_path: Path) -> None:
    """A read-only build of a store that does not exist is refused; nothing is created."""
    missing = tmp_path / "typo"
    with pytest.raises(SettingsError, match="no event store at"):
        build_store(StoreSettings(), missing, read_only=True)
    assert not missing.exists()


async def test_a_read_only_store_reads_without_starting_a_writer(tmp_path: Path) -> None:
    """Export opens the store read-only: it reads what is there and cannot append."""
    writer = build_store(StoreSettings(), tmp_path)
    await writer.open()
    await writer.append(stored(3))
    await writer.close()
    reader = build_store(StoreSettings(), tmp_path, read_only=True)
    await reader.open()
    try:
        assert [e.id for _, e in await reader.read()] == ["e0", "e1", "e2"]
        with pytest.raises(Exception, match="not open"):
            await reader.append(stored(1))
    finally:
        await reader.close()
