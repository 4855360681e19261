"""The cluster's account book (a JetStream KV bucket): the SQLite book's behaviour, shared
by every node, watched, and read from the last snapshot when the cluster is gone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from nats.js.errors import NoStreamResponseError

from qlevents import StoreUnavailableError
from qlevents.accounts import (
    DISABLED,
    AccountBook,
    AccountBookLike,
    AccountError,
    AccountNotFoundError,
    key_problem,
)
from qlevents.accounts_jetstream import JetStreamAccountBook
from qlevents.store.factory import StoreSettings, build_account_book
from tests.cluster import NatsCluster, module_cluster
from tests.support import holds_within

nats_cluster = module_cluster(3)


@pytest.fixture
def open_book(nats_cluster: NatsCluster) -> Iterator[Callable[..., JetStreamAccountBook]]:
    """Opens books on a bucket of the test's own (as many as a test wants: its nodes)."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    books: list[JetStreamAccountBook] = []

    def open_one(**options: object) -> JetStreamAccountBook:
        book = JetStreamAccountBook(nats_cluster.url.split(","), prefix=prefix, **options)  # type: ignore[arg-type]
        books.append(book)
        return book

    yield open_one
    for book in books:
        book.close()


def eventually(condition: Callable[[], bool], within: float = 1.0) -> bool:
    """Whether ``condition`` holds within ``within`` seconds (what 'applied within 1 s' means)."""
    return holds_within(condition, within)


def test_the_factory_picks_the_bucket_on_a_cluster(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """build_account_book gives the KV book for nats:// and the SQLite book otherwise."""
    sqlite = build_account_book(StoreSettings(), tmp_path)
    assert isinstance(sqlite, AccountBook)
    sqlite.close()
    settings = StoreSettings(store=nats_cluster.url, nats_prefix=f"t{uuid.uuid4().hex[:8]}")
    book = build_account_book(settings, tmp_path)
    try:
        assert isinstance(book, JetStreamAccountBook)
    finally:
        book.close()


def test_it_keeps_the_sqlite_books_behaviour(
    open_book: Callable[..., JetStreamAccountBook],
) -> None:
    """Add, get, disable, limit, move, rotate and expire behave as in the SQLite book."""
    book: AccountBookLike = open_book()
    shop = book.add("  Shop  ")
    assert shop.name == "Shop" and book.get(shop.client_key) == shop
    assert book.get_by_id(shop.id) == shop
    assert book.all() == [shop]
    assert book.set_status(shop.client_key, DISABLED).status == DISABLED
    limited = book.set_limit(shop.client_key, 5.0, 10.0)
    assert (limited.rate_limit, limited.burst) == (5.0, 10.0)
    with pytest.raises(AccountError):
        book.set_limit(shop.client_key, -1.0, None)
    moved = book.move(shop.client_key, "https://other.example/events", "http://here/events")
    assert moved.endpoint == "https://other.example/events"
    home = book.move(shop.client_key, "http://here/events", "http://here/events")
    assert home.endpoint is None
    rotated, old = book.rotate_key(shop.client_key, 60)
    assert rotated.id == shop.id and rotated.client_key != shop.client_key
    assert set(book.working_keys()) == {rotated.client_key, shop.client_key}
    assert book.previous_keys(shop.id) == [old]
    with pytest.raises(AccountNotFoundError):
        book.get(shop.client_key)
    expired = book.expire_key(shop.client_key)
    assert set(book.working_keys()) == {rotated.client_key}
    problem = key_problem(
        shop.client_key, book.working_keys(), {expired.client_key: expired}, "x", time.time()
    )
    assert problem is not None and problem.code == "expired_client_key"
    book.record_local_endpoint("http://lb.example/events")
    assert book.local_endpoint("default") == "http://lb.example/events"


def test_another_node_applies_a_change_within_a_second(
    open_book: Callable[..., JetStreamAccountBook],
) -> None:
    """A change made on one node reaches another node's book (its watch) within 1 s."""
    first, second = open_book(), open_book()
    version = second.data_version()
    shop = first.add("Shop")
    assert eventually(lambda: second.data_version() > version)
    assert second.get(shop.client_key) == shop
    first.set_status(shop.client_key, DISABLED)
    assert eventually(lambda: second.get(shop.client_key).status == DISABLED)
    rotated, _ = first.rotate_key(shop.client_key, 60)
    assert eventually(lambda: rotated.client_key in second.working_keys())


def test_key_uses_are_shared_and_written_at_most_once_a_minute(
    open_book: Callable[..., JetStreamAccountBook],
) -> None:
    """A key's last use reaches the other nodes; a use less than a minute later is not written."""
    first, second = open_book(), open_book()
    shop = first.add("Shop")
    first.record_key_uses({shop.client_key: 1000.0})
    assert eventually(lambda: second.key_uses([shop.client_key]) == {shop.client_key: 1000.0})
    version = first.data_version()
    first.record_key_uses({shop.client_key: 1030.0})
    assert first.data_version() == version
    first.record_key_uses({shop.client_key: 1070.0})
    assert eventually(lambda: second.key_uses([shop.client_key]) == {shop.client_key: 1070.0})


def test_a_read_only_book_creates_no_bucket(open_book: Callable[..., JetStreamAccountBook]) -> None:
    """Opened read-only on a cluster without the bucket, the book is empty and takes no change."""
    book = open_book(readonly=True)
    assert book.all() == []
    with pytest.raises(AccountError):
        book.add("Shop")


def test_without_the_cluster_it_answers_from_its_snapshot(tmp_path: Path) -> None:
    """With every NATS server killed, reads answer as before; a change fails as unavailable."""
    cluster = NatsCluster(tmp_path / "nats", 3).start()
    try:
        book = JetStreamAccountBook(cluster.url.split(","), prefix="lost")
        try:
            shop = book.add("Shop")
            for index in range(3):
                cluster.kill(index)
            assert book.get(shop.client_key) == shop
            assert shop.client_key in book.working_keys()
            with pytest.raises(StoreUnavailableError):
                book.add("Another")
        finally:
            book.close()
    finally:
        cluster.stop()


class _LeaderlessAtFirst:
    """A bucket whose stream answers nobody for its first ``silent`` writes (a bucket just
    created, or electing a leader: NATS says "no responders"), then takes them."""

    def __init__(self, silent: int) -> None:
        self.silent = silent
        self.written: list[str] = []

    async def create(self, key: str, value: bytes) -> int:
        if self.silent:
            self.silent -= 1
            raise NoStreamResponseError
        self.written.append(key)
        return len(self.written)


@pytest.mark.anyio
async def test_a_write_before_the_buckets_leader_is_elected_waits_for_it() -> None:
    """`make cluster` adds its demo account right after creating the bucket: a write that
    no leader answered stored nothing, so it is sent again (bounded by the write timeout)."""
    bucket = _LeaderlessAtFirst(silent=2)
    book = SimpleNamespace(_kv=bucket)
    revision = await JetStreamAccountBook._put(book, "account.a", b"{}", 0)  # type: ignore[arg-type]
    assert (revision, bucket.written) == (1, ["account.a"])
