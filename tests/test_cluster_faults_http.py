"""Faults over HTTP: clients with Idempotency-Keys retrying round-robin across two ingest
nodes while a NATS follower, then the stream's leader, then an ingest node are killed -9.
The truth is counted from the stream: every acknowledged event there once, nothing stored
twice, and the nodes answered only 200 or 503 with Retry-After (never 500)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qlevents.accounts_jetstream import JetStreamAccountBook
from qlevents.store.factory import StoreSettings, build_store
from qlevents.store.jetstream import JetStreamEventStore
from qlevents.store.jetstream_api import stream_info
from tests.cluster import NatsCluster
from tests.support import RunningServer, free_port, view

CLIENTS = 4
EVENTS_PER_REQUEST = 5


class Clients:
    """Threads sending 5-event requests with a key each, round-robin across the nodes; a
    request is sent again with its key (to the next node) until it is answered 200."""

    def __init__(self, endpoints: list[str], key: str) -> None:
        self.endpoints = endpoints
        self.key = key
        self.acknowledged: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.without_retry_after = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._send, args=(n,), daemon=True) for n in range(CLIENTS)
        ]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _send(self, client: int) -> None:
        turn = client
        with httpx.Client(timeout=30) as http:
            request = 0
            while not self._stop.is_set():
                marks = [f"c{client}-r{request}-e{i}" for i in range(EVENTS_PER_REQUEST)]
                body = [view(self.key, product_id=mark) for mark in marks]
                headers = {"idempotency-key": f"c{client}-r{request}-{uuid.uuid4().hex[:6]}"}
                while True:  # until acknowledged (also after stop: an answer is owed)
                    endpoint = self.endpoints[turn % len(self.endpoints)]
                    turn += 1
                    try:
                        answer = http.post(endpoint, json=body, headers=headers)
                    except httpx.HTTPError:
                        time.sleep(0.1)
                        continue
                    with self._lock:
                        self.statuses[answer.status_code] += 1
                        if answer.status_code == 503 and "retry-after" not in answer.headers:
                            self.without_retry_after += 1
                    if answer.status_code == 200:
                        with self._lock:
                            self.acknowledged += marks
                        break
                    time.sleep(0.2)
                request += 1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats", 3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def ingest_node(tmp_path: Path, name: str, cluster: NatsCluster, prefix: str) -> RunningServer:
    options = [
        "--store", cluster.url, "--nats-prefix", prefix, "--cluster-nodes", "2",
        "--nats-publish-timeout", "1", "--nats-retry-seconds", "8",
        "--nats-max-bytes", str(64 << 20), "--log-level", "warning",
    ]  # fmt: skip
    return RunningServer(
        tmp_path / name, free_port(), options, tmp_path / f"{name}.log", demo=False
    ).start(timeout=60)


def stored_marks(cluster: NatsCluster, prefix: str) -> list[str]:
    store = build_store(
        StoreSettings(store=cluster.url, nats_prefix=prefix), Path(), read_only=True
    )

    async def read() -> list[str]:
        await store.open()
        try:
            marks, position = [], 0
            while True:
                batch = await store.read(position, 5000, None)
                for position, event in batch:  # noqa: B007
                    marks.append(str(event.product_id))
                if len(batch) < 5000:
                    return marks
        finally:
            await store.close()

    return asyncio.run(read())


def leader_index(cluster: NatsCluster, prefix: str) -> int:
    store = build_store(
        StoreSettings(store=cluster.url, nats_prefix=prefix), Path(), read_only=True
    )
    assert isinstance(store, JetStreamEventStore)

    async def leader() -> int:
        await store.open()
        try:
            assert store._nc is not None
            deadline = time.monotonic() + 20
            while True:
                info = await stream_info(store._nc, store.stream, 1.0)
                if info.cluster is not None and info.cluster.leader is not None:
                    return cluster.index_of(info.cluster.leader)
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        finally:
            await store.close()

    return asyncio.run(leader())


def test_killing_nats_nodes_then_an_ingest_node_loses_nothing_and_stores_nothing_twice(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """kill -9 a NATS follower, then the stream's leader, then one ingest node, under keyed
    round-robin traffic: every acknowledged event is in the stream once, no event twice,
    only 200 and 503 + Retry-After answered."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    first = ingest_node(tmp_path, "ingest-1", cluster, prefix)
    second = ingest_node(tmp_path, "ingest-2", cluster, prefix)
    book = JetStreamAccountBook(cluster.url.split(","), prefix=prefix)
    try:
        key = book.add("shop").client_key
    finally:
        book.close()
    time.sleep(0.5)  # the nodes' watches bring the account (~ms); the directories poll 0.1 s
    try:
        with Clients([first.events_url, second.events_url], key) as clients:
            time.sleep(2)
            leader = leader_index(cluster, prefix)
            follower = (leader + 1) % 3
            cluster.kill(follower)
            time.sleep(2)
            cluster.restart(follower)
            time.sleep(1)
            cluster.kill(leader)  # an election (4-9 s): appends retry, or 503 + Retry-After
            time.sleep(6)
            cluster.restart(leader)
            time.sleep(2)
            first.kill()  # an ingest node, mid-traffic: retries go through the other
            time.sleep(4)
        stored = stored_marks(cluster, prefix)
    finally:
        second.stop()
        if first.process is not None:
            first.kill()
    twice = [mark for mark, count in Counter(stored).items() if count > 1]
    assert twice == []
    assert sorted(clients.acknowledged) == sorted(stored)
    assert len(clients.acknowledged) > 0
    assert set(clients.statuses) <= {200, 503}, clients.statuses
    assert clients.without_retry_after == 0
    print(
        f"acknowledged {len(clients.acknowledged)} events, stored {len(stored)},"
        f" answers {dict(clients.statuses)}"
    )
