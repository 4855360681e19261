"""The backends' consumer helper: in order, at least once, acknowledged after the handler's
work, resuming where it stopped; on a single NATS server with the shipped configuration."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qlevents.consumer import EventConsumer, EventMessage
from qlevents.store.factory import build_store
from qlevents.store.jetstream import JetStreamEventStore
from tests.cluster import NatsCluster, jetstream_settings, module_cluster
from tests.store.events import stored

pytestmark = pytest.mark.anyio


nats_server = module_cluster(1)


@pytest.fixture
async def store(nats_server: NatsCluster, tmp_path: Path) -> AsyncIterator[JetStreamEventStore]:
    """A cluster store on a stream of its own, with three requests of 2 views and 1
    conversion each already in it."""
    store = build_store(jetstream_settings(nats_server), tmp_path)
    assert isinstance(store, JetStreamEventStore)
    await store.open()
    for n in range(3):
        await store.append(stored(3, prefix=f"r{n}-"))
    yield store
    await store.close()


def consumer(store: JetStreamEventStore, name: str, **options: object) -> EventConsumer:
    return EventConsumer(store.servers, name, prefix=store.prefix, **options)  # type: ignore[arg-type]


class Recorder:
    """A handler that keeps what it was given, and fails on the messages it is told to."""

    def __init__(self, fail_on: set[str] | None = None) -> None:
        self.seen: list[list[str]] = []
        self.messages: list[EventMessage] = []
        self.fail_on = set(fail_on or ())

    async def __call__(self, message: EventMessage) -> None:
        ids = [event.id for event in message.events]
        self.seen.append(ids)
        if self.fail_on & set(ids):
            self.fail_on -= set(ids)
            raise RuntimeError("the backend failed")
        self.messages.append(message)


async def test_reads_in_order_and_resumes_where_it_stopped(store: JetStreamEventStore) -> None:
    """Every message once, in stream order; a restart under the same name goes on after
    the last acknowledged one; another name starts from the beginning."""
    first = Recorder()
    async with consumer(store, "pricing") as log:
        assert await log.process(first) == 6
        assert await log.process(first, timeout=0.1) == 0
    assert first.seen == [
        ["r0-0", "r0-2"], ["r0-1"], ["r1-0", "r1-2"], ["r1-1"], ["r2-0", "r2-2"], ["r2-1"],
    ]  # fmt: skip
    await store.append(stored(1, prefix="later-"))
    again = Recorder()
    async with consumer(store, "pricing") as log:
        assert await log.process(again) == 1
    assert again.seen == [["later-0"]]
    other = Recorder()
    async with consumer(store, "audit") as log:
        assert await log.process(other) == 7


async def test_a_fetch_ending_in_asyncios_own_timeout_is_an_empty_batch(
    store: JetStreamEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py ends a fetch with asyncio's plain TimeoutError, not its own, when the answer to
    its no-wait probe comes at the deadline (seen once in CI): that is "nothing yet" too."""

    async def fetch_at_the_deadline(batch: int, timeout: float) -> list[object]:
        raise TimeoutError  # asyncio.TimeoutError is this builtin since 3.11

    async with consumer(store, "pricing") as log:
        assert log._subscription is not None
        monkeypatch.setattr(log._subscription, "fetch", fetch_at_the_deadline)
        assert await log.process(Recorder(), timeout=0.1) == 0


async def test_a_failed_message_comes_again_before_the_ones_after_it(
    store: JetStreamEventStore,
) -> None:
    """The handler raises on the 2nd message: it and the rest come again, in order."""
    handler = Recorder(fail_on={"r0-1"})
    async with consumer(store, "pricing") as log:
        with pytest.raises(RuntimeError, match="the backend failed"):
            await log.process(handler)
        # (the wait only bounds a loaded machine: they come again at once)
        assert await log.process(handler, timeout=10) == 5
        assert await log.process(handler, timeout=0.1) == 0
    assert handler.seen == [
        ["r0-0", "r0-2"], ["r0-1"], ["r0-1"], ["r1-0", "r1-2"], ["r1-1"], ["r2-0", "r2-2"],
        ["r2-1"],
    ]  # fmt: skip


async def test_run_retries_a_failure_until_stopped(store: JetStreamEventStore) -> None:
    """run() logs a handler's failure, hands the message over again, and stops when told."""
    stop = asyncio.Event()
    handler = Recorder(fail_on={"r1-1"})

    async def handle(message: EventMessage) -> None:
        await handler(message)
        if len(handler.messages) == 6:
            stop.set()

    async with consumer(store, "pricing", retry_delay=0.05) as log:
        await asyncio.wait_for(log.run(handle, stop=stop), 30)
    assert [m.events[0].id for m in handler.messages] == [
        "r0-0", "r0-1", "r1-0", "r1-1", "r2-0", "r2-1",
    ]  # fmt: skip


async def test_filters_by_kind_with_the_stores_positions(store: JetStreamEventStore) -> None:
    """A backend that prices conversions reads only those; positions match the store's."""
    handler = Recorder()
    async with consumer(store, "conversions", kind="conversion") as log:
        assert await log.process(handler) == 3
    assert {m.kind for m in handler.messages} == {"conversion"}
    positions = dict((event.id, position) for position, event in await store.read())
    for message in handler.messages:
        assert message.account == "k1"
        assert [positions[e.id] for e in message.events] == message.positions
