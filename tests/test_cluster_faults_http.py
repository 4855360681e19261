"""Faults over HTTP: clients with Idempotency-Keys retrying round-robin across two ingest
nodes while NATS nodes (a follower, the stream's leader, two of three) or an ingest node are
killed -9, and a stream that fills up. The truth is counted from the stream: every
acknowledged event there once, nothing stored twice, nothing of a refused request stored,
and the nodes answered only 200 or 503 with Retry-After (never 500, never too late)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from qlevents.accounts_jetstream import JetStreamAccountBook
from qlevents.store.factory import StoreSettings, build_store
from qlevents.store.jetstream import JetStreamEventStore
from qlevents.store.jetstream_api import stream_info
from tests.cluster import NatsCluster
from tests.support import RunningServer, free_port, get, view

CLIENTS = 4
EVENTS_PER_REQUEST = 5
PAUSE = 0.01


@dataclass(frozen=True)
class Answer:
    endpoint: str
    sent: float
    answered: float
    status: int


class Clients:
    """Threads sending 5-event requests with a key each, round-robin across the nodes; a
    request is sent again with its key (to the next node) until it is answered 200. A
    request unanswered after ``timeout`` seconds counts in ``timeouts``."""

    def __init__(self, endpoints: list[str], key: str, timeout: float = 30) -> None:
        self.endpoints = endpoints
        self.key = key
        self.timeout = timeout
        self.acknowledged: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.answers: list[Answer] = []
        self.without_retry_after = 0
        self.timeouts = 0
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
        with httpx.Client(timeout=self.timeout) as http:
            request = 0
            while not self._stop.is_set():
                marks = [f"c{client}-r{request}-e{i}" for i in range(EVENTS_PER_REQUEST)]
                body = [view(self.key, product_id=mark) for mark in marks]
                headers = {"idempotency-key": f"c{client}-r{request}-{uuid.uuid4().hex[:6]}"}
                while True:  # until acknowledged (also after stop: an answer is owed)
                    endpoint = self.endpoints[turn % len(self.endpoints)]
                    turn += 1
                    sent = time.monotonic()
                    try:
                        answer = http.post(endpoint, json=body, headers=headers)
                    except httpx.HTTPError as exc:
                        if isinstance(exc, httpx.TimeoutException):
                            with self._lock:
                                self.timeouts += 1
                        time.sleep(0.1)
                        continue
                    with self._lock:
                        self.statuses[answer.status_code] += 1
                        self.answers.append(
                            Answer(endpoint, sent, time.monotonic(), answer.status_code)
                        )
                        if answer.status_code == 503 and "retry-after" not in answer.headers:
                            self.without_retry_after += 1
                    if answer.status_code == 200:
                        with self._lock:
                            self.acknowledged += marks
                        break
                    time.sleep(0.2)
                request += 1
                # A breath between requests: four clients still keep requests in flight
                # at nearly every moment, without taking both cores from the other tests.
                time.sleep(PAUSE)

    def answered_between(self, start: float, end: float) -> list[Answer]:
        """The answers to requests sent after ``start`` and answered before ``end``."""
        with self._lock:
            return [a for a in self.answers if a.sent >= start and a.answered <= end]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats", 3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def wait_until(condition: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {condition}"
        time.sleep(0.1)


def ingest_node(
    tmp_path: Path,
    name: str,
    cluster: NatsCluster,
    prefix: str,
    retry_seconds: float = 8,
    max_bytes: int = 64 << 20,
) -> RunningServer:
    options = [
        "--store", cluster.url, "--nats-prefix", prefix, "--cluster-nodes", "2",
        "--nats-publish-timeout", "1", "--nats-retry-seconds", str(retry_seconds),
        "--nats-max-bytes", str(max_bytes), "--log-level", "warning",
    ]  # fmt: skip
    return RunningServer(
        tmp_path / name, free_port(), options, tmp_path / f"{name}.log", demo=False
    ).start(timeout=60)


def add_account(cluster: NatsCluster, prefix: str) -> str:
    """A new account's client key, once the nodes' watches can have brought it (~ms; the
    directories poll every 0.1 s)."""
    book = JetStreamAccountBook(cluster.url.split(","), prefix=prefix)
    try:
        key = book.add("shop").client_key
    finally:
        book.close()
    time.sleep(0.5)
    return key


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
    key = add_account(cluster, prefix)
    try:
        with Clients([first.events_url, second.events_url], key) as clients:
            wait_until(lambda: len(clients.acknowledged) > 0)
            time.sleep(1)
            leader = leader_index(cluster, prefix)
            follower = (leader + 1) % 3
            cluster.kill(follower)
            time.sleep(1.5)
            cluster.restart(follower)
            time.sleep(1)
            cluster.kill(leader)  # an election (4-9 s): appends retry, or 503 + Retry-After
            time.sleep(5)
            cluster.restart(leader)
            time.sleep(1)
            first.kill()  # an ingest node, mid-traffic: retries go through the other
            time.sleep(3)
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
    assert clients.without_retry_after == 0 and clients.timeouts == 0
    print(
        f"acknowledged {len(clients.acknowledged)} events, stored {len(stored)},"
        f" answers {dict(clients.statuses)}"
    )


def test_without_a_quorum_the_nodes_answer_503_and_recover_by_themselves(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """kill -9 two of three NATS nodes under keyed round-robin traffic: both ingest nodes
    answer 503 + Retry-After (in time) and /readyz 503; the nodes restarted, both answer 200
    again without being restarted; every acknowledged event is in the stream once."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    # An append gives up after 2 s + one 1 s publish timeout: a client waiting 10 s has its
    # answer, or the node is hanging.
    nodes: list[RunningServer] = []
    try:
        for n in (1, 2):
            nodes.append(ingest_node(tmp_path, f"ingest-{n}", cluster, prefix, retry_seconds=2))
        readiness = [f"{node.url}/readyz" for node in nodes]
        key = add_account(cluster, prefix)
        with Clients([node.events_url for node in nodes], key, timeout=10) as clients:
            wait_until(lambda: len(clients.acknowledged) > 0)
            leader = leader_index(cluster, prefix)
            killed = [leader, (leader + 1) % 3]
            for index in killed:
                cluster.kill(index)
            wait_until(lambda: all(get(url).status_code == 503 for url in readiness))
            down = time.monotonic()
            wait_until(lambda: len(clients.answered_between(down, time.monotonic())) >= 4)
            restarted = time.monotonic()
            for index in killed:
                cluster.restart(index, wait=False)
            cluster.wait_ready(killed)
            wait_until(lambda: all(get(url).status_code == 200 for url in readiness))
            back = time.monotonic()

            def both_answer_200() -> bool:
                answers = clients.answered_between(back, time.monotonic())
                return {a.endpoint for a in answers if a.status == 200} == set(clients.endpoints)

            wait_until(both_answer_200)
        stored = stored_marks(cluster, prefix)
    finally:
        for node in nodes:
            node.stop()
    assert {a.status for a in clients.answered_between(down, restarted)} == {503}
    assert set(clients.statuses) <= {200, 503}, clients.statuses
    assert clients.without_retry_after == 0 and clients.timeouts == 0
    assert [mark for mark, count in Counter(stored).items() if count > 1] == []
    assert sorted(clients.acknowledged) == sorted(stored)
    print(f"acknowledged {len(stored)} events, answers {dict(clients.statuses)}")


def test_a_full_stream_answers_503_and_stores_no_part_of_a_request(tmp_path: Path) -> None:
    """An ingest node on a 1 MiB stream, sent 200-event keyed requests until it is full: the
    503 has Retry-After and says why; every event of each 200 is stored, none of each 503."""
    cluster = NatsCluster(tmp_path / "nats", 1).start()
    prefix = f"t{uuid.uuid4().hex[:10]}"
    answers: list[tuple[list[str], httpx.Response]] = []
    try:
        node = ingest_node(tmp_path, "ingest", cluster, prefix, max_bytes=1 << 20)
        try:
            key = add_account(cluster, prefix)
            for request in range(40):
                marks = [f"r{request}-e{i}" for i in range(200)]
                body = [view(key, product_id=mark) for mark in marks]
                answer = node.post(body, headers={"idempotency-key": f"r{request}"}, timeout=10)
                answers.append((marks, answer))
                if answer.status_code != 200:
                    break
            stored = set(stored_marks(cluster, prefix))
        finally:
            node.stop()
    finally:
        cluster.stop()
    *taken, (_, refused) = answers
    assert taken and [answer.status_code for _, answer in taken] == [200] * len(taken)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
    [error] = refused.json()["errors"]
    assert error["code"] == "store_unavailable"
    assert "none of them was" in error["message"] and "event store is full" in error["message"]
    for marks, answer in answers:
        assert stored.issuperset(marks) if answer.status_code == 200 else stored.isdisjoint(marks)
