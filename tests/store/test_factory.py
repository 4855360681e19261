"""Choosing a store: the factory builds what --store names; read-only builds create nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qlevents.settings import SettingsError, from_env
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
    with pytest.raises(SettingsError, match=r"unknown store .sqlit.; use sqlite, memory or nats:"):
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


def test_nats_urls_choose_the_cluster_store(tmp_path: Path) -> None:
    """--store nats://a,nats://b: the cluster store on those servers, with its settings."""
    from qlevents.store.jetstream import JetStreamEventStore

    settings = StoreSettings(
        store="nats://10.0.0.1:4222, nats://10.0.0.2:4222", nats_prefix="shop-a"
    )
    store = build_store(settings, tmp_path)
    assert isinstance(store, JetStreamEventStore)
    assert store.servers == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    assert (store.prefix, store.stream) == ("shop-a", "SHOP-A")
    assert not list(tmp_path.iterdir())


def test_the_cluster_settings_are_read_from_the_environment() -> None:
    """QLEVENTS_ALLOW_LAZY_FSYNC, QLEVENTS_NATS_* set the cluster store's settings."""
    settings = from_env(
        StoreSettings,
        {
            "QLEVENTS_STORE": "nats://127.0.0.1:4222",
            "QLEVENTS_ALLOW_LAZY_FSYNC": "yes",
            "QLEVENTS_NATS_PUBLISH_TIMEOUT": "1.5",
            "QLEVENTS_NATS_MAX_BYTES": str(1 << 30),
        },
    )
    assert settings.allow_lazy_fsync
    assert settings.nats_publish_timeout == 1.5
    assert settings.nats_max_bytes == 1 << 30


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"store": "nats://a:4222,http://b:4222"}, "http://b:4222 is not a nats:// URL"),
        ({"store": "nats://a:4222", "nats_prefix": "a.b"}, "QLEVENTS_NATS_PREFIX='a.b'"),
    ],
)
def test_bad_cluster_settings_are_refused_by_name(values: dict[str, str], message: str) -> None:
    """A URL that is not nats://, or a prefix that cannot start a subject, says which."""
    with pytest.raises(SettingsError, match=re.escape(message)):
        StoreSettings(**values)  # type: ignore[arg-type]


def test_on_one_machine_users_are_the_data_directorys_and_activity_is_not_shared(
    tmp_path: Path,
) -> None:
    """SQLite (the default): the users of the data directory's book file, and no stream."""
    from qlevents.server.activity import ActivityLedger, ActivitySettings
    from qlevents.store.factory import build_shared_activity, build_user_store
    from qlevents.users import OPERATOR, UserStore

    users = build_user_store(StoreSettings(), tmp_path)
    ledger = ActivityLedger(tmp_path)
    try:
        assert isinstance(users, UserStore)
        users.add("ann@shop.example", "a long password", OPERATOR)
        assert (tmp_path / "accounts.sqlite3").exists()
        assert build_shared_activity(StoreSettings(), ledger, ActivitySettings()) is None
    finally:
        users.close()
        ledger.close()
