"""Killing NATS servers (SIGKILL) under the cluster store. The truth is counted from the
stream: no acknowledged event lost, none stored twice; no quorum means 503s, never a hang,
and the store recovers by itself when the servers return."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from qlevents import StoreOutcomeUnknownError, StoreUnavailableError
from qlevents.store import jetstream_api as api
from qlevents.store.factory import build_store
from qlevents.store.jetstream import JetStreamEventStore
from tests.cluster import NatsCluster, jetstream_settings
from tests.store.events import record, stored

pytestmark = pytest.mark.anyio

PUBLISH_TIMEOUT = 1.0
PAUSE = 0.02
#: Long enough to ride out a leader election (4-9 s) for most requests.
RETRY_SECONDS = 8.0
#: Longer than any append may take: one that runs past it hangs.
HANG = RETRY_SECONDS + PUBLISH_TIMEOUT + 5.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats", 3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(params=[RETRY_SECONDS])
async def store(
    cluster: NatsCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[JetStreamEventStore]:
    """A cluster store that retries an append for ``request.param`` seconds."""
    settings = jetstream_settings(
        cluster, nats_publish_timeout=PUBLISH_TIMEOUT, nats_retry_seconds=request.param
    )
    store = build_store(settings, tmp_path)
    assert isinstance(store, JetStreamEventStore)
    await store.open()
    yield store
    await store.close()


async def leader_of(store: JetStreamEventStore, cluster: NatsCluster) -> int:
    """The index of the node that leads the store's stream (waiting for an election)."""
    assert store._nc is not None
    deadline = time.monotonic() + 20
    while True:
        try:
            info = await api.stream_info(store._nc, store.stream, 1.0)
            if info.cluster is not None and info.cluster.leader is not None:
                return cluster.index_of(info.cluster.leader)
        except Exception:
            pass
        assert time.monotonic() < deadline, "the stream has no leader"
        await asyncio.sleep(0.1)


class Clients:
    """Clients sending 5-event requests with keys, each retrying the same request after a
    503 until it is acknowledged, as the SDK does."""

    def __init__(self, store: JetStreamEventStore, count: int) -> None:
        self.store = store
        self.acknowledged: list[str] = []
        self.refusals: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._client(c)) for c in range(count)]

    async def _client(self, client: int) -> None:
        number = 0
        while not self._stop.is_set():
            events = stored(5, prefix=f"c{client}-{number}-")
            key = record(key=f"c{client}-{number}")
            while True:
                try:
                    await asyncio.wait_for(self.store.append(events, key), HANG)
                except StoreUnavailableError as exc:
                    self.refusals[type(exc).__name__] += 1
                    await asyncio.sleep(0.1)
                    continue
                self.acknowledged.extend(event.id for event in events)
                break
            number += 1
            # A breath between appends: eight clients still keep appends in flight at
            # nearly every moment, without taking both cores from the other tests.
            await asyncio.sleep(PAUSE)

    async def progress(self, timeout: float = 20.0) -> None:
        """Until some more requests are acknowledged."""
        start = len(self.acknowledged)
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < start + 50:
            assert time.monotonic() < deadline, f"no progress; refusals {self.refusals}"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_killing_a_follower_then_the_leader_loses_nothing_and_stores_nothing_twice(
    store: JetStreamEventStore, cluster: NatsCluster
) -> None:
    """kill -9 a follower (and restart it), then the stream's leader, under 8 clients:
    every acknowledged event is in the stream once, and nothing else is."""
    clients = Clients(store, 8)
    await clients.progress()
    leader = await leader_of(store, cluster)
    follower = next(i for i in range(3) if i != leader)
    cluster.kill(follower)
    await clients.progress()
    await asyncio.to_thread(cluster.restart, follower)
    await clients.progress()
    leader = await leader_of(store, cluster)
    cluster.kill(leader)
    await clients.progress()  # a new leader, elected by the two that are left
    await asyncio.to_thread(cluster.restart, leader)
    await clients.progress()
    await clients.stop()
    ids = [event.id for _, event in await store.read(limit=1_000_000)]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert sorted(ids) == sorted(clients.acknowledged)
    print(f"acknowledged {len(ids)} events; refusals {dict(clients.refusals)}")


@pytest.mark.parametrize("store", [3.0], indirect=True)
async def test_without_a_quorum_appends_fail_and_recover_by_themselves(
    store: JetStreamEventStore, cluster: NatsCluster
) -> None:
    """Two of three servers killed: appends answer 503 within their time, readiness fails;
    once they are back the same store stores again, and the retried request once."""
    await store.append(stored(2, prefix="before-"))
    leader = await leader_of(store, cluster)
    followers = [i for i in range(3) if i != leader]
    for index in followers:
        cluster.kill(index)
    events = stored(3, prefix="during-")
    with pytest.raises(StoreUnavailableError) as refused:
        await asyncio.wait_for(store.append(events, record()), HANG)
    deadline = time.monotonic() + 20
    while True:
        try:
            await store.check_writable()
        except StoreUnavailableError:
            break
        assert time.monotonic() < deadline, "still ready without a quorum"
        await asyncio.sleep(0.2)
    await asyncio.gather(*(asyncio.to_thread(cluster.restart, i) for i in followers))
    deadline = time.monotonic() + 30
    while True:
        try:
            await asyncio.wait_for(store.append(events, record()), HANG)
            break
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "the store did not recover"
            await asyncio.sleep(0.2)
    await store.check_writable()
    ids = [event.id for _, event in await store.read()]
    assert ids == ["before-0", "before-1", "during-0", "during-1", "during-2"]
    print(f"without quorum: {type(refused.value).__name__}: {refused.value}")
    assert isinstance(refused.value, StoreUnavailableError | StoreOutcomeUnknownError)


async def test_a_store_opened_right_after_a_full_restart_waits_for_the_leaders(
    store: JetStreamEventStore, cluster: NatsCluster, tmp_path: Path
) -> None:
    """Every server killed and started again: a store opened at once retries until
    JetStream has elected its leaders, then finds the events and takes new ones."""
    await store.append(stored(2, prefix="before-"), record())
    for index in range(3):
        cluster.kill(index)
    for index in range(3):
        cluster.restart(index, wait=False)
    again = build_store(jetstream_settings(cluster, nats_prefix=store.prefix), tmp_path)
    await again.open()
    try:
        assert await again.append(stored(2, prefix="x-"), record()) is not None
        assert await again.append(stored(1, prefix="after-")) is None
        ids = [event.id for _, event in await again.read()]
        assert ids == ["before-0", "before-1", "after-0"]
    finally:
        await again.close()
