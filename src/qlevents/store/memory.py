"""An in-memory event store, for unit tests and for trying the API without a disk."""

from __future__ import annotations

import time
from collections.abc import Sequence

from qlevents.events import StoredEvent
from qlevents.store.base import IDEMPOTENCY_TTL, EventStore, IdempotencyRecord, Pruned, Replay


class MemoryEventStore(EventStore):
    """Keeps everything in lists and dicts; nothing survives the process."""

    def __init__(self) -> None:
        self._events: list[StoredEvent] = []
        self._pruned = 0  # events removed from the front; positions stay as they were
        self._idempotency: dict[tuple[str, str], tuple[float, Replay]] = {}

    async def append(
        self, events: Sequence[StoredEvent], idempotency: IdempotencyRecord | None = None
    ) -> Replay | None:
        now = time.time()
        if idempotency is not None:
            slot = (idempotency.scope, idempotency.key)
            earlier = self._idempotency.get(slot)
            if earlier is not None and now - earlier[0] < IDEMPOTENCY_TTL:
                return earlier[1]
            self._idempotency[slot] = (now, Replay(idempotency.fingerprint, idempotency.response))
        self._events.extend(events)
        return None

    async def find_replay(self, scope: str, key: str) -> Replay | None:
        earlier = self._idempotency.get((scope, key))
        if earlier is not None and time.time() - earlier[0] < IDEMPOTENCY_TTL:
            return earlier[1]
        return None

    async def read(
        self, after: int = 0, limit: int = 1000, client_key: str | None = None
    ) -> list[tuple[int, StoredEvent]]:
        found: list[tuple[int, StoredEvent]] = []
        start = max(after - self._pruned, 0)
        for position, event in enumerate(self._events[start:], start=start + 1 + self._pruned):
            if client_key is None or event.client_key == client_key:
                found.append((position, event))
                if len(found) == limit:
                    break
        return found

    async def prune(self, received_before: str) -> Pruned:
        count = 0
        newest = self._events[-1].received_at if self._events else ""
        for event in self._events:  # the newest request stays, as the contract says
            if event.received_at >= received_before or event.received_at == newest:
                break
            count += 1
        del self._events[:count]
        self._pruned += count
        return Pruned(events=count, through=self._pruned if count else 0)

    async def check_writable(self) -> None:
        return None
