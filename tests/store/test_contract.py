"""The EventStore contract (store/base.py), run against every implementation unchanged."""

from __future__ import annotations

import asyncio

import pytest
from msgspec.structs import replace

from qlevents.store import EventStore, IdempotencyRecord, Replay
from tests.store.events import record, stored

pytestmark = pytest.mark.anyio


class TestAppendAndRead:
    async def test_reads_back_what_was_appended_in_order(self, store: EventStore) -> None:
        """Appended events come back whole, oldest first, with increasing positions."""
        events = stored(5)
        assert await store.append(events[:2]) is None
        assert await store.append(events[2:]) is None
        got = await store.read()
        assert [e for _, e in got] == events
        positions = [p for p, _ in got]
        assert positions == sorted(positions) and len(set(positions)) == 5

    async def test_reads_after_a_position_with_a_limit(self, store: EventStore) -> None:
        """read(after, limit) pages through the log."""
        await store.append(stored(10))
        first = await store.read(limit=4)
        rest = await store.read(after=first[-1][0], limit=100)
        assert [e.id for _, e in first + rest] == [f"e{i}" for i in range(10)]

    async def test_filters_by_client_key(self, store: EventStore) -> None:
        """read(client_key=...) returns only that account's events."""
        await store.append(stored(3, "k1", "a") + stored(2, "k2", "b"))
        got = await store.read(client_key="k2")
        assert [e.id for _, e in got] == ["b0", "b1"]


class TestIdempotency:
    async def test_second_append_with_same_key_stores_nothing(self, store: EventStore) -> None:
        """The same (scope, key) returns the first answer and stores nothing again."""
        assert await store.append(stored(2), record(response=b"first")) is None
        replay = await store.append(stored(2, prefix="x"), record(response=b"second"))
        assert replay == Replay(fingerprint=b"f1", response=b"first")
        assert len(await store.read()) == 2

    async def test_keys_are_scoped_per_account(self, store: EventStore) -> None:
        """The same key under another account is a different request."""
        await store.append(stored(1), record())
        other = IdempotencyRecord(scope="k2", key="key-1", fingerprint=b"f", response=b"")
        assert await store.append(stored(1, "k2", "b"), other) is None
        assert len(await store.read()) == 2

    async def test_a_used_key_can_be_looked_up(self, store: EventStore) -> None:
        """find_replay answers for a key stored by append, and only for its account."""
        assert await store.find_replay("k1", "key-1") is None
        await store.append(stored(1), record(response=b"first"))
        assert await store.find_replay("k1", "key-1") == Replay(b"f1", b"first")
        assert await store.find_replay("k2", "key-1") is None
        assert await store.find_replay("k1", "key-2") is None

    async def test_concurrent_duplicates_store_once(self, store: EventStore) -> None:
        """Two appends with one key in flight together: one stores, the other replays."""
        results = await asyncio.gather(
            store.append(stored(3), record(response=b"a")),
            store.append(stored(3, prefix="y"), record(response=b"b")),
        )
        assert sorted(r is None for r in results) == [False, True]
        assert len(await store.read()) == 3

    async def test_an_unused_key_claimed_with_no_events_is_remembered(
        self, store: EventStore
    ) -> None:
        """A request whose events all failed still claims its key (its answer is replayed)."""
        assert await store.append([], record(response=b"all failed")) is None
        assert await store.append(stored(1), record()) == Replay(b"f1", b"all failed")
        assert await store.read() == []


class TestPositions:
    async def test_positions_are_stable_across_reads(self, store: EventStore) -> None:
        """The same event has the same position in every read, filtered or not."""
        await store.append(stored(3, "k1", "a") + stored(3, "k2", "b"))
        everything = dict((e.id, p) for p, e in await store.read())
        for key in ("k1", "k2"):
            for position, event in await store.read(client_key=key):
                assert everything[event.id] == position

    async def test_reading_after_the_last_position_finds_only_newer_events(
        self, store: EventStore
    ) -> None:
        """A reader resumes after the last position it saw and misses nothing new."""
        await store.append(stored(2, prefix="old"))
        last = (await store.read())[-1][0]
        assert await store.read(after=last) == []
        await store.append(stored(2, prefix="new"))
        assert [e.id for _, e in await store.read(after=last)] == ["new0", "new1"]

    async def test_an_empty_append_stores_nothing(self, store: EventStore) -> None:
        """append([]) without a key is allowed and leaves the log as it was."""
        assert await store.append([]) is None
        assert await store.read() == []


class TestReadiness:
    async def test_an_open_store_is_writable(self, store: EventStore) -> None:
        """check_writable passes on an open, healthy store."""
        await store.check_writable()


class TestPrune:
    async def test_removes_the_old_prefix_and_keeps_positions(self, store: EventStore) -> None:
        """Events received before the cut go; the others keep their positions."""
        old = [replace(e, received_at="2026-01-01T00:00:00.000000Z") for e in stored(3, "k1", "o")]
        await store.append(old)
        await store.append(stored(2, "k1", "n"))
        before = await store.read()
        pruned = await store.prune("2026-06-01T00:00:00.000000Z")
        assert pruned.events == 3 and before[2][0] <= pruned.through < before[3][0]
        assert await store.read() == before[3:]
        assert await store.read(after=before[0][0]) == before[3:]

    async def test_the_newest_request_stays_so_positions_are_never_reused(
        self, store: EventStore
    ) -> None:
        """Pruning everything keeps the newest request; the next append gets a higher position."""
        for n in range(3):
            at = f"2026-01-0{n + 1}T00:00:00.000000Z"
            await store.append([replace(e, received_at=at) for e in stored(2, prefix=f"r{n}-")])
        before = await store.read()
        pruned = await store.prune("2099-01-01T00:00:00.000000Z")
        assert (pruned.events, pruned.through >= before[3][0]) == (4, True)
        assert await store.read() == before[4:]
        await store.append(stored(1, prefix="next"))
        assert (await store.read())[-1][0] > before[-1][0]

    async def test_nothing_old_prunes_nothing(self, store: EventStore) -> None:
        """A cut before every event removes nothing."""
        await store.append(stored(2))
        pruned = await store.prune("2000-01-01T00:00:00.000000Z")
        assert (pruned.events, pruned.through) == (0, 0)
        assert len(await store.read()) == 2

    async def test_a_retry_of_a_pruned_request_is_still_a_replay(self, store: EventStore) -> None:
        """Idempotency claims outlive their pruned events: nothing is stored twice."""
        old = [replace(e, received_at="2026-01-01T00:00:00.000000Z") for e in stored(2)]
        await store.append(old, record(response=b"first"))
        await store.prune("2026-06-01T00:00:00.000000Z")
        kept = await store.read()  # the newest event stays
        assert await store.append(old, record()) == Replay(b"f1", b"first")
        assert await store.read() == kept
