"""The event store seam: one small interface, implemented in memory, on SQLite (and later NATS).

The API code only sees :class:`EventStore`. An implementation must make ``append`` atomic
(all events of a call, or none) and durable before it returns, and must apply the
idempotency record in the same atomic step as the events.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qlevents.events import StoredEvent

#: How long an idempotency key is remembered (seconds).
IDEMPOTENCY_TTL = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What to remember of a request sent with an ``Idempotency-Key``."""

    scope: str
    """The account the key belongs to (keys of different accounts never collide)."""
    key: str
    fingerprint: bytes
    """A digest of the request body, to tell a retry from a different request with the same key."""
    response: bytes
    """The answer to give again to a retry."""


@dataclass(frozen=True, slots=True)
class Replay:
    """The earlier answer to a request whose idempotency key was already used."""

    fingerprint: bytes
    response: bytes


@dataclass(frozen=True, slots=True)
class CommitStats:
    """Reported to the store's observer after every commit (for metrics)."""

    requests: int
    events: int
    seconds: float


CommitObserver = Callable[[CommitStats], None]


class EventStore(abc.ABC):
    """Where accepted events go. Positions are increasing integers, starting after 0."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare the store for use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Finish pending writes and release resources."""

    @abc.abstractmethod
    async def append(
        self, events: Sequence[StoredEvent], idempotency: IdempotencyRecord | None = None
    ) -> Replay | None:
        """Store ``events`` atomically and durably, then return None.

        With an ``idempotency`` record whose (scope, key) was stored less than
        :data:`IDEMPOTENCY_TTL` ago, store nothing and return the earlier :class:`Replay`.
        Raises :class:`~qlevents.StoreUnavailableError` when nothing could be stored.
        """

    async def find_replay(self, scope: str, key: str) -> Replay | None:
        """The answer remembered for ``key`` of account ``scope``, if it was used less than
        :data:`IDEMPOTENCY_TTL` ago; None if not, or if the store cannot say.

        Only for a retry that a rate limit would refuse: ``append`` itself applies keys
        atomically. The default knows nothing.
        """
        return None

    @abc.abstractmethod
    async def read(
        self, after: int = 0, limit: int = 1000, client_key: str | None = None
    ) -> list[tuple[int, StoredEvent]]:
        """Up to ``limit`` stored events at positions after ``after``, oldest first."""

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Raise :class:`~qlevents.StoreUnavailableError` unless a write would succeed now."""
