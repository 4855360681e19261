"""The cluster store beyond the contract: a whole 5 MiB request in one atomic step, retries
that store nothing twice, a full stream, the servers' fsync check, read-only use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StoreCompression

from qlevents import StoreOutcomeUnknownError, StoreUnavailableError
from qlevents.events import StoredEvent
from qlevents.settings import SettingsError
from qlevents.store import EventStore, Replay, jetstream
from qlevents.store import jetstream_api as api
from qlevents.store.base import CommitStats
from qlevents.store.factory import StoreSettings, build_store
from qlevents.store.jetstream import JetStreamEventStore, PublishStats
from tests.cluster import NatsCluster, delete_stream, jetstream_settings
from tests.store.events import record, stored

pytestmark = pytest.mark.anyio

OpenStore = Callable[..., Awaitable[JetStreamEventStore]]


@pytest.fixture
async def open_store(nats_cluster: NatsCluster, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Open cluster stores on the module's cluster, each on its own stream, with settings
    and constructor options given; all closed (and their streams deleted) after the test."""
    opened: list[tuple[JetStreamEventStore, StoreSettings]] = []

    async def start(**options: Any) -> JetStreamEventStore:
        settings = jetstream_settings(nats_cluster, **options.pop("settings", {}))
        store = build_store(settings, tmp_path, **options)
        assert isinstance(store, JetStreamEventStore)
        await store.open()
        opened.append((store, settings))
        return store

    yield start
    for store, settings in opened:
        await store.close()
        await delete_stream(nats_cluster, settings)


def big_events(n: int, client_key: str = "k1", prefix: str = "big") -> list[StoredEvent]:
    """Events of ~5.3 KB each (40 tags of 128 characters)."""
    return [
        StoredEvent(
            id=f"{prefix}{i}",
            received_at="2026-11-27T00:00:00.000000Z",
            client_key=client_key,
            event="view",
            product_id=f"p{i}",
            price=1.0,
            permalink="https://shop.example/p",
            tags=[f"{t:03d}" + "x" * 125 for t in range(40)],
        )
        for i in range(n)
    ]


async def read_all(store: EventStore) -> list[StoredEvent]:
    return [event for _, event in await store.read(limit=100_000)]


class TestLargeRequests:
    async def test_a_1000_event_5_mib_request_is_stored_whole_with_its_answer(
        self, open_store: OpenStore
    ) -> None:
        """Over 5 MiB of events and an answer as large: all stored, the answer replayed."""
        store = await open_store()
        events = big_events(1000)
        answer = b"A" * (5 << 20)
        assert await store.append(events, record(response=answer)) is None
        assert await read_all(store) == events
        assert await store.find_replay("k1", "key-1") == Replay(b"f1", answer)
        assert await store.append(big_events(3), record()) == Replay(b"f1", answer)
        assert len(await read_all(store)) == 1000

    async def test_a_request_of_1000_accounts_is_one_batch(self, open_store: OpenStore) -> None:
        """A message per account: 1,001 messages fit the shipped batch limit."""
        store = await open_store()
        events = [stored(1, f"acct{i}", f"a{i}-")[0] for i in range(1000)]
        assert await store.append(events, record()) is None
        assert [e.id for e in await read_all(store)] == [e.id for e in events]
        assert [e.id for _, e in await store.read(client_key="acct7")] == ["a7-0"]


class TestRetries:
    @pytest.fixture
    def lost_first_answer(self, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        """The first batch is stored but its answer is lost (a timeout); the count of
        batches sent is returned."""
        real = api.publish_batch
        sent = [0]

        async def publish_batch(*args: Any, **kwargs: Any) -> api.PubAck:
            sent[0] += 1
            ack = await real(*args, **kwargs)
            if sent[0] == 1:
                raise NatsTimeoutError
            return ack

        monkeypatch.setattr(api, "publish_batch", publish_batch)
        return sent

    async def test_a_request_without_a_key_is_not_stored_twice_by_a_retry(
        self, open_store: OpenStore, lost_first_answer: list[int]
    ) -> None:
        """The retry's claim is refused: the first attempt was stored, append succeeds."""
        seen: list[PublishStats] = []
        store = await open_store(publish_observer=seen.append)
        assert await store.append(stored(3)) is None
        assert lost_first_answer[0] == 2
        assert [e.id for e in await read_all(store)] == ["e0", "e1", "e2"]
        assert [(s.outcome, s.attempts) for s in seen] == [("stored", 2)]

    async def test_a_request_with_a_key_is_answered_as_stored_not_replayed(
        self, open_store: OpenStore, lost_first_answer: list[int]
    ) -> None:
        """The record found by the retry is this request's own: stored once, no Replay."""
        store = await open_store()
        assert await store.append(stored(3), record()) is None
        assert lost_first_answer[0] == 2
        assert len(await read_all(store)) == 3
        assert await store.append(stored(3), record(response=b"2")) == Replay(b"f1", b"{}")


class TestFullStream:
    async def test_a_full_stream_refuses_whole_requests_and_keeps_what_it_has(
        self, open_store: OpenStore
    ) -> None:
        """discard new: a request that does not fit fails (503) and none of it is stored."""
        store = await open_store(settings={"nats_max_bytes": 1 << 20})
        accepted: list[str] = []
        with pytest.raises(StoreUnavailableError, match="full") as refused:
            for n in range(1000):
                events = big_events(20, prefix=f"r{n}-")
                await store.append(events, record(key=f"key-{n}"))
                accepted.extend(e.id for e in events)
        assert not isinstance(refused.value, StoreOutcomeUnknownError)
        assert accepted
        assert [e.id for e in await read_all(store)] == accepted
        with pytest.raises(StoreUnavailableError, match="full"):
            await store.append(big_events(20, prefix="again-"))
        assert [e.id for e in await read_all(store)] == accepted


async def in_flight(append: Awaitable[Replay | None]) -> asyncio.Future[Replay | None]:
    """``append`` started and its write sent (alone: nothing else is waiting), so that the
    appends made next wait for the batch slot."""
    started = asyncio.ensure_future(append)
    for _ in range(3):  # the append queues, then its write takes it and sends it
        await asyncio.sleep(0)
    return started


class TestGroupCommit:
    @pytest.fixture
    async def one_in_flight(
        self, nats_cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[tuple[JetStreamEventStore, list[int]]]:
        """A store that sends one batch at a time, and the sizes (messages) of the batches
        it sent. No linger: a lone append after a full write goes at once (the tests of
        when a write starts are in TestWhenAWriteStarts)."""
        settings = jetstream_settings(nats_cluster)
        self.commits: list[CommitStats] = []
        store = JetStreamEventStore(
            settings.nats_servers,
            prefix=settings.nats_prefix,
            max_bytes=settings.nats_max_bytes,
            max_batches_in_flight=1,
            linger=0.0,
            observer=self.commits.append,
        )
        real = api.publish_batch
        batches: list[int] = []

        async def publish_batch(nc: Any, messages: Any, timeout: float) -> api.PubAck:
            batches.append(len(messages))
            return await real(nc, messages, timeout)

        monkeypatch.setattr(api, "publish_batch", publish_batch)
        await store.open()
        yield store, batches
        await store.close()
        await delete_stream(nats_cluster, settings)

    async def test_appends_waiting_for_a_batch_go_in_the_next_one_together(
        self, one_in_flight: tuple[JetStreamEventStore, list[int]]
    ) -> None:
        """An append in flight, 50 more at once: the 50 go in one write, their events merged
        in one message with one claim for all; every event stored once, in order, each at
        its own position."""
        store, batches = one_in_flight
        first = await in_flight(store.append(stored(1, prefix="first-")))
        appends = [store.append(stored(1, prefix=f"r{n}-")) for n in range(50)]
        assert await asyncio.gather(first, *appends) == [None] * 51
        assert batches == [2, 2]
        found = await store.read(limit=100)
        assert [e.id for _, e in found] == ["first-0"] + [f"r{n}-0" for n in range(50)]
        positions = [p for p, _ in found]
        assert positions == sorted(set(positions))
        # Reported as SQLite reports its group commits: one commit of 50 requests.
        assert [(c.requests, c.events) for c in self.commits] == [(1, 1), (50, 50)]

    async def test_appends_made_at_once_with_a_slot_free_go_in_one_write(
        self, one_in_flight: tuple[JetStreamEventStore, list[int]]
    ) -> None:
        """The write in a free slot starts once the appends already made have joined it: not
        one write for the first and another for the rest."""
        store, batches = one_in_flight
        appends = [store.append(stored(1, prefix=f"r{n}-")) for n in range(20)]
        assert await asyncio.gather(*appends) == [None] * 20
        assert batches == [2]
        assert [(c.requests, c.events) for c in self.commits] == [(20, 20)]

    async def test_a_used_key_in_a_group_is_replayed_and_the_others_go_again(
        self, one_in_flight: tuple[JetStreamEventStore, list[int]]
    ) -> None:
        """A group holding a request whose key was used is refused whole: that request gets
        its first answer, the others go again together and are stored once."""
        store, batches = one_in_flight
        assert await store.append(stored(1, prefix="first-"), record(key="used")) is None
        blocker = await in_flight(store.append(stored(1, prefix="blocker-")))
        others = [store.append(stored(1, prefix=f"r{n}-"), record(key=f"k{n}")) for n in range(3)]
        retry = store.append(stored(1, prefix="retry-"), record(key="used", response=b"2"))
        answers = await asyncio.gather(blocker, *others, retry)
        assert answers == [None, None, None, None, Replay(b"f1", b"{}")]
        # first; blocker alone; the group of four (events, four records), refused; the three
        assert batches == [2, 2, 5, 4]
        assert [(c.requests, c.events) for c in self.commits] == [(1, 1), (1, 1), (3, 3)]
        assert sorted(e.id for e in await read_all(store)) == sorted(
            ["first-0", "blocker-0", "r0-0", "r1-0", "r2-0"]
        )

    async def test_a_waiting_append_cancelled_is_not_sent_and_holds_up_nothing(
        self, one_in_flight: tuple[JetStreamEventStore, list[int]]
    ) -> None:
        """An append cancelled while it waits for the batch slot (its request gone) is not
        sent; the ones still waiting go in the next batch, and a later append alone."""
        store, batches = one_in_flight
        blocker = await in_flight(store.append(stored(1, prefix="blocker-")))
        waiting = [
            asyncio.ensure_future(store.append(stored(1, prefix=f"r{n}-"))) for n in range(3)
        ]
        await asyncio.sleep(0)  # they queue behind it
        waiting[1].cancel()
        assert await asyncio.gather(blocker, waiting[0], waiting[2]) == [None, None, None]
        with pytest.raises(asyncio.CancelledError):
            await waiting[1]
        assert await store.append(stored(1, prefix="later-")) is None
        assert batches == [2, 2, 2]
        assert [(c.requests, c.events) for c in self.commits] == [(1, 1), (2, 2), (1, 1)]
        assert sorted(e.id for e in await read_all(store)) == [
            "blocker-0",
            "later-0",
            "r0-0",
            "r2-0",
        ]

    async def test_a_group_whose_answer_was_lost_is_sent_again_whole_and_stored_once(
        self,
        one_in_flight: tuple[JetStreamEventStore, list[int]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The group's batch is stored but its answer lost: the same write goes again, its
        claim (or a record) is found to be its own, and every request is answered stored,
        its events stored once."""
        store, batches = one_in_flight
        real = api.publish_batch
        answers_lost = [2]  # the first group's first attempt, then the keyed group's

        async def publish_batch(nc: Any, messages: Any, timeout: float) -> api.PubAck:
            ack = await real(nc, messages, timeout)
            if len(batches) in answers_lost:
                raise NatsTimeoutError
            return ack

        monkeypatch.setattr(api, "publish_batch", publish_batch)
        blocker = await in_flight(store.append(stored(1, prefix="blocker-")))
        keyless = [store.append(stored(1, prefix=f"r{n}-")) for n in range(3)]
        assert await asyncio.gather(blocker, *keyless) == [None] * 4
        answers_lost[:] = [len(batches) + 2]
        blocker = await in_flight(store.append(stored(1, prefix="blocker2-")))
        keyed = [store.append(stored(1, prefix=f"k{n}-"), record(key=f"k{n}")) for n in range(3)]
        assert await asyncio.gather(blocker, *keyed) == [None] * 4
        assert len(batches) == 6  # blocker, group twice; blocker, group twice
        ids = [e.id for e in await read_all(store)]
        assert sorted(ids) == sorted(
            ["blocker-0", "blocker2-0"] + [f"{p}{n}-0" for p in "rk" for n in range(3)]
        )
        assert [(c.requests, c.events) for c in self.commits] == [(1, 1), (3, 3)] * 2

    async def test_a_group_takes_at_most_1024_events_and_one_request_per_key(
        self, one_in_flight: tuple[JetStreamEventStore, list[int]]
    ) -> None:
        """A position holds an event's index in its write in 10 bits: three 500-event
        requests waiting go as two writes; a second request with a key already in the group
        waits for the next one (and is answered with the first's answer)."""
        store, _ = one_in_flight
        blocker = await in_flight(store.append(stored(1, prefix="blocker-")))
        big = [store.append(stored(500, prefix=f"b{n}-")) for n in range(3)]
        assert await asyncio.gather(blocker, *big) == [None] * 4
        assert [(c.requests, c.events) for c in self.commits] == [(1, 1), (2, 1000), (1, 500)]
        self.commits.clear()
        blocker = await in_flight(store.append(stored(1, prefix="blocker2-")))
        twice = [
            store.append(stored(1, prefix="a-"), record(key="same")),
            store.append(stored(1, prefix="c-"), record(key="other")),
            store.append(stored(1, prefix="d-"), record(key="same", response=b"2")),
        ]
        assert await asyncio.gather(blocker, *twice) == [None, None, None, Replay(b"f1", b"{}")]
        assert [(c.requests, c.events) for c in self.commits] == [(1, 1), (2, 2)]
        assert len(await read_all(store)) == 1 + 1500 + 1 + 2


Writes = tuple[JetStreamEventStore, list[str], asyncio.Event]


class TestWhenAWriteStarts:
    """A write costs a Raft round whatever it carries: with a write in flight, a second
    starts only for ``min_parallel_events`` (8) events or more; after a full write, a lone
    request waits up to ``linger`` for the requests that write answered."""

    @pytest.fixture
    async def writes(
        self, nats_cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[Callable[..., Awaitable[Writes]]]:
        """Makes an open store (two slots, as by default) whose first write is held, not
        sent, until the test sets the event it returns; and the log of writes started and
        ended."""
        settings = jetstream_settings(nats_cluster)
        stores: list[JetStreamEventStore] = []
        real = api.publish_batch

        async def make(**options: Any) -> Writes:
            log: list[str] = []
            release = asyncio.Event()

            async def publish_batch(nc: Any, messages: Any, timeout: float) -> api.PubAck:
                number = sum(entry.startswith("start") for entry in log) + 1
                log.append(f"start {number}")
                if number == 1:
                    await asyncio.wait_for(release.wait(), 10)
                ack = await real(nc, messages, timeout)
                log.append(f"end {number}")
                return ack

            monkeypatch.setattr(api, "publish_batch", publish_batch)
            store = JetStreamEventStore(
                settings.nats_servers,
                prefix=settings.nats_prefix,
                max_bytes=settings.nats_max_bytes,
                **options,
            )
            await store.open()
            stores.append(store)
            return store, log, release

        yield make
        for store in stores:
            await store.close()
        await delete_stream(nats_cluster, settings)

    async def test_a_few_events_wait_for_the_write_in_flight(
        self, writes: Callable[..., Awaitable[Writes]]
    ) -> None:
        store, log, release = await writes()
        first = await in_flight(store.append(stored(1, prefix="first-")))
        few = [asyncio.ensure_future(store.append(stored(1, prefix=f"r{n}-"))) for n in range(7)]
        await turns(5)
        assert log == ["start 1"]  # a slot is free, but 7 events are not worth a round
        release.set()
        assert await asyncio.gather(first, *few) == [None] * 8
        assert log == ["start 1", "end 1", "start 2", "end 2"]
        assert len(await read_all(store)) == 8

    async def test_enough_events_start_a_second_write_at_once(
        self, writes: Callable[..., Awaitable[Writes]]
    ) -> None:
        store, log, release = await writes()
        first = await in_flight(store.append(stored(1, prefix="first-")))
        enough = [asyncio.ensure_future(store.append(stored(1, prefix=f"r{n}-"))) for n in range(8)]
        assert await asyncio.gather(*enough) == [None] * 8  # while the first is held
        assert log == ["start 1", "start 2", "end 2"]
        release.set()
        assert await first is None
        assert len(await read_all(store)) == 9

    async def test_after_a_full_write_a_lone_request_waits_for_the_others(
        self, writes: Callable[..., Awaitable[Writes]]
    ) -> None:
        """The requests a full write answered come back one by one: the first waits for
        the rest, and they share one write (here the linger is long: they all come)."""
        store, log, release = await writes(linger=60.0)
        release.set()
        full = [store.append(stored(1, prefix=f"a{n}-")) for n in range(8)]
        assert await asyncio.gather(*full) == [None] * 8
        lone = asyncio.ensure_future(store.append(stored(1, prefix="lone-")))
        await turns(5)
        assert log == ["start 1", "end 1"]
        others = [store.append(stored(1, prefix=f"b{n}-")) for n in range(7)]
        assert await asyncio.gather(lone, *others) == [None] * 8
        assert log == ["start 1", "end 1", "start 2", "end 2"]
        assert len(await read_all(store)) == 16

    async def test_a_lone_request_goes_when_the_linger_is_over_and_then_at_once(
        self, writes: Callable[..., Awaitable[Writes]]
    ) -> None:
        """Nobody else comes: the lone request is written alone after the linger. The
        write before it was small, so the next lone request goes without waiting."""
        store, log, release = await writes(linger=0.05)
        release.set()
        assert await asyncio.gather(*(store.append(stored(1)) for _ in range(8))) == [None] * 8
        assert await store.append(stored(1, prefix="lone-")) is None
        assert log == ["start 1", "end 1", "start 2", "end 2"]
        next_one = asyncio.ensure_future(store.append(stored(1, prefix="next-")))
        await turns(3)
        assert log[-1] == "start 3"
        assert await next_one is None

    async def test_a_request_waiting_when_the_store_closes_is_refused(
        self, writes: Callable[..., Awaitable[Writes]]
    ) -> None:
        store, log, release = await writes(linger=60.0)
        release.set()
        assert await asyncio.gather(*(store.append(stored(1)) for _ in range(8))) == [None] * 8
        lone = asyncio.ensure_future(store.append(stored(1, prefix="lone-")))
        await turns(3)
        await store.close()
        with pytest.raises(StoreUnavailableError, match="closed"):
            await lone
        assert log == ["start 1", "end 1"]

    async def test_a_request_waiting_behind_a_failing_write_is_answered_in_the_retry_time(
        self, writes: Callable[..., Awaitable[Writes]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No answer from the stream: a request that waited behind a write retrying for the
        whole retry time (10 s) has its answer 10 s after it was made, plus at most one
        publish timeout (2 s) for its own attempt; not 10 s more. The store's clock is a
        fake one that each attempt moves on by its timeout."""
        publishes: list[PublishStats] = []
        store, _, release = await writes(linger=0.0, publish_observer=publishes.append)
        release.set()
        clock = [1000.0]

        async def unanswered(nc: Any, messages: Any, timeout: float) -> api.PubAck:
            await asyncio.sleep(0)  # waiting for the answer, others run
            clock[0] += timeout
            raise NatsTimeoutError

        monkeypatch.setattr(api, "publish_batch", unanswered)
        monkeypatch.setattr(jetstream, "time", SimpleNamespace(monotonic=lambda: clock[0]))
        first = await in_flight(store.append(stored(1, prefix="first-")))
        behind = asyncio.ensure_future(store.append(stored(1, prefix="behind-")))
        for append in (first, behind):
            with pytest.raises(StoreOutcomeUnknownError):
                await append
        waited_for, waiting = publishes
        assert (waited_for.outcome, waited_for.attempts, waited_for.seconds) == ("unknown", 5, 10.0)
        assert waiting.outcome == "unknown" and waiting.attempts >= 1
        assert waiting.seconds <= 12.0


async def turns(n: int) -> None:
    """Let the event loop run ``n`` turns."""
    for _ in range(n):
        await asyncio.sleep(0)


class TestObservers:
    async def test_observers_see_each_append(self, open_store: OpenStore) -> None:
        """The commit observer sees stored events; the publish observer every outcome."""
        commits: list[CommitStats] = []
        publishes: list[PublishStats] = []
        store = await open_store(observer=commits.append, publish_observer=publishes.append)
        await store.append(stored(4), record())
        await store.append(stored(4), record())
        assert [(c.requests, c.events) for c in commits] == [(1, 4)]
        assert [(p.outcome, p.attempts, p.events) for p in publishes] == [
            ("stored", 1, 4),
            ("replayed", 1, 4),
        ]


class TestReadOnly:
    async def test_reading_a_missing_stream_says_so(
        self, nats_cluster: NatsCluster, tmp_path: Path
    ) -> None:
        """export with a wrong --store (or prefix) is refused; nothing is created."""
        settings = jetstream_settings(nats_cluster)
        reader = build_store(settings, tmp_path, read_only=True)
        with pytest.raises(SettingsError, match="no event stream"):
            await reader.open()
        await reader.close()

    async def test_a_read_only_store_reads_and_cannot_append(
        self, open_store: OpenStore, nats_cluster: NatsCluster, tmp_path: Path
    ) -> None:
        """A reader sees what a writer stored and takes no writes."""
        writer = await open_store()
        await writer.append(stored(3))
        settings = jetstream_settings(nats_cluster, nats_prefix=writer.prefix)
        reader = build_store(settings, tmp_path, read_only=True)
        await reader.open()
        try:
            assert [e.id for e in await read_all(reader)] == ["e0", "e1", "e2"]
            with pytest.raises(StoreUnavailableError, match="only for reading"):
                await reader.append(stored(1))
        finally:
            await reader.close()


class TestReadiness:
    @pytest.mark.parametrize(("silent_seconds", "ready"), [(1.8, True), (6.0, False)])
    async def test_replicas_the_leader_has_not_heard_from_for_5_s_are_lost(
        self,
        open_store: OpenStore,
        monkeypatch: pytest.MonkeyPatch,
        silent_seconds: float,
        ready: bool,
    ) -> None:
        """NATS still calls a dead replica current for 10 s: readiness counts it lost once the
        leader has not heard from it for 5 s (an idle replica is heard from every 1-2 s)."""
        store = await open_store()
        stream_info = api.stream_info

        async def with_silent_replicas(*args: Any) -> api.StreamInfo:
            info = await stream_info(*args)
            assert info.cluster is not None and len(info.cluster.replicas) == 2
            for peer in info.cluster.replicas:  # current, as NATS says for 10 s
                peer.current, peer.offline = True, False
                peer.active = int(silent_seconds * 1e9)
            return info

        monkeypatch.setattr(api, "stream_info", with_silent_replicas)
        if ready:
            await store.check_writable()
        else:
            with pytest.raises(StoreUnavailableError, match=r"only 1 of .* 3 replicas"):
                await store.check_writable()


class TestStreamSettings:
    async def test_a_stream_made_compressed_is_set_back_to_uncompressed(
        self, nats_cluster: NatsCluster, tmp_path: Path
    ) -> None:
        """S2 is refused (a replica killed under load could not recover its compressed
        blocks): a stream an operator made with it is updated at the next start, and keeps
        its events."""
        settings = jetstream_settings(nats_cluster)
        store = build_store(settings, tmp_path)
        assert isinstance(store, JetStreamEventStore)
        await store.open()
        try:
            assert store._nc is not None
            js = store._nc.jetstream()
            info = await js.stream_info(store.stream)
            assert info.config.compression in (None, StoreCompression.NONE)
            await store.append(stored(3))
            await js.update_stream(replace(info.config, compression=StoreCompression.S2))
            await store.close()
            await store.open()
            assert store._nc is not None
            info = await store._nc.jetstream().stream_info(store.stream)
            assert info.config.compression in (None, StoreCompression.NONE)
            assert len(await read_all(store)) == 3
        finally:
            await store.close()
            await delete_stream(nats_cluster, settings)


class TestServerChecks:
    """Single servers with the shipped configuration, or with a line of it changed."""

    @staticmethod
    async def open_on(cluster: NatsCluster, tmp_path: Path, **settings: Any) -> EventStore:
        store = build_store(jetstream_settings(cluster, **settings), tmp_path)
        await store.open()
        return store

    async def test_a_single_server_takes_a_stream_of_one_replica(self, tmp_path: Path) -> None:
        """One server alone (no cluster block): R1, the same behaviour."""
        cluster = NatsCluster(tmp_path / "nats", 1).start()
        try:
            store = await self.open_on(cluster, tmp_path)
            await store.append(stored(2), record())
            assert await store.append(stored(2), record()) is not None
            assert len(await read_all(store)) == 2
            assert isinstance(store, JetStreamEventStore)
            assert store._nc is not None
            info = await api.stream_info(store._nc, store.stream, 2.0)
            assert info.config.num_replicas == 1
            await store.close()
        finally:
            cluster.stop()

    async def test_servers_that_do_not_fsync_every_write_are_refused(self, tmp_path: Path) -> None:
        """Without sync_interval: always the store does not start, unless told to."""
        cluster = NatsCluster(tmp_path / "nats", 1)
        for config in cluster.configs:
            config.write_text(config.read_text().replace("sync_interval: always", ""))
        cluster.start()
        try:
            with pytest.raises(SettingsError, match=r"do not fsync every write.*allow-lazy-fsync"):
                await self.open_on(cluster, tmp_path)
            store = await self.open_on(cluster, tmp_path, allow_lazy_fsync=True)
            assert await store.append(stored(1)) is None
            await store.close()
        finally:
            cluster.stop()

    async def test_servers_that_cannot_say_are_refused(self, tmp_path: Path) -> None:
        """A configuration without the VARZ import: the store cannot check, and says so."""
        cluster = NatsCluster(tmp_path / "nats", 1)
        for config in cluster.configs:
            text = config.read_text()
            start = text.index("    imports: [")
            end = text.index("]", text.index("qlevents.sys.varz")) + 1
            config.write_text(text[:start] + text[end:])
        cluster.start()
        try:
            with pytest.raises(SettingsError, match="cannot tell whether"):
                await self.open_on(cluster, tmp_path)
        finally:
            cluster.stop()
