"""Upgrades: an older data directory is migrated in place; a newer one is refused."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from qlevents import StoreUnavailableError
from qlevents.sqlite_schema import SchemaVersionError, migrate, version_of
from qlevents.store.sqlite import SQLiteEventStore
from qlevents.store.sqlite_db import MIGRATIONS
from tests.store.events import stored

pytestmark = pytest.mark.anyio

RELEASE_0_1_0 = Path(__file__).parent.parent / "fixtures" / "data-0.1.0"
SHOP_KEY = "qlk_dJ9bOOUTj_8SRLbRIbtnHlaEMtNCdrCN"


@pytest.fixture
def old_data_dir(tmp_path: Path) -> Path:
    """A copy of the data directory written by release 0.1.0."""
    return Path(shutil.copytree(RELEASE_0_1_0, tmp_path / "data"))


async def test_a_0_1_0_event_store_is_upgraded_and_keeps_everything(old_data_dir: Path) -> None:
    """Opening 0.1.0's events file records the current version and loses nothing."""
    path = old_data_dir / "events.sqlite3"
    store = SQLiteEventStore(path)
    await store.open()
    try:
        old = await store.read()
        assert [e.product_id for _, e in old] == ["P0", "P1", "P2"]
        assert await store.find_replay(SHOP_KEY, "retry-1") is not None
        await store.append(stored(1, prefix="new"))
        assert [e.id for _, e in await store.read(after=old[-1][0])] == ["new0"]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert version_of(conn) == len(MIGRATIONS)


async def test_a_newer_event_store_is_refused_on_open(tmp_path: Path) -> None:
    """A file from a newer qlevents is not opened for writing; the error says what to do."""
    path = tmp_path / "events.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    store = SQLiteEventStore(path)
    with pytest.raises(StoreUnavailableError, match="written by a newer qlevents"):
        await store.open()


def test_a_newer_event_store_is_refused_by_readers(tmp_path: Path) -> None:
    """Export does not misread a file from a newer qlevents."""
    path = tmp_path / "events.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events (position INTEGER PRIMARY KEY)")
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaVersionError, match="Run the newer qlevents"):
        SQLiteEventStore(path, read_only=True).read_sync()


class TestMigrate:
    def test_a_new_file_gets_every_migration(self, tmp_path: Path) -> None:
        """A fresh database ends at the latest version with every table."""
        conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
        assert migrate(conn, "x", ["CREATE TABLE a (x);", "CREATE TABLE b (y);"]) == 0
        assert version_of(conn) == 2
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert tables == {"a", "b"}

    def test_only_the_missing_migrations_run(self, tmp_path: Path) -> None:
        """A file at version 1 gets migration 2 only."""
        conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
        migrate(conn, "x", ["CREATE TABLE a (x);"])
        assert migrate(conn, "x", ["CREATE TABLE a (x);", "ALTER TABLE a ADD z;"]) == 1
        assert [r[1] for r in conn.execute("PRAGMA table_info(a)")] == ["x", "z"]

    def test_a_failing_migration_changes_nothing(self, tmp_path: Path) -> None:
        """Migrations apply in one transaction: a failure leaves the old version whole."""
        conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
        migrate(conn, "x", ["CREATE TABLE a (x);"])
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, "x", ["CREATE TABLE a (x);", "CREATE TABLE b (y); ALTER TABLE c ADD q;"])
        assert version_of(conn) == 1
        assert "b" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
