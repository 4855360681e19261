"""The event store seam: one small interface, with an in-memory, an SQLite (and a JetStream)
implementation behind it. The API code only sees :class:`EventStore`.

The contract, written so that a store without SQLite's transactions can meet it:

**Atomic.** The events of one ``append`` become readable together or never: no reader, at
any time, sees some of them without the others, and none of them is ever stored twice by
the store's own retries. (SQLite: one transaction. A replicated log: one atomic batch, or
one message holding the batch.)

**Durable.** ``append`` returns only after its events survive what the store is built to
survive: SQLite, a crash of the process or the machine (WAL, fsync'd); a replicated log, the
loss of any minority of its servers (acknowledged by a quorum, each having fsync'd).

**Idempotent.** An ``append`` with an :class:`IdempotencyRecord` claims its (scope, key) in
the same atomic step as its events. For at least :data:`IDEMPOTENCY_TTL` after a claim,
every other ``append`` with that (scope, key) stores nothing and returns the first claim's
:class:`Replay`, whichever server or process it reaches. (A store may remember a key
longer, never shorter.)

**When the store cannot tell.** ``append`` raises :class:`~qlevents.StoreUnavailableError`
when it knows that nothing was stored. When it cannot know (a write that timed out may still
commit once a quorum returns) it raises :class:`~qlevents.StoreOutcomeUnknownError`: the API
answers 503 all the same, and a retry with the same Idempotency-Key is then answered as a
replay if the first attempt did commit. It never answers success for a write it did not see
acknowledged, and never raises for a write that was stored and acknowledged.

**Positions.** Every stored event has a position: an integer, increasing in the order the
events became readable, never reused, stable for as long as the event is kept (a reader
resumes after the last position it saw). Positions need not be consecutive.

**Pruning.** ``prune`` removes the longest prefix of the log whose requests were all received
before a time (a request's events go together: they share their receipt time), except the
newest request of the log, which always stays (so that no position is handed out twice):
what remains keeps its positions, and a reader that had not reached the pruned part resumes
at the first event kept. Idempotency claims are not pruned with their
events: a retry within 24 h is still answered as a replay and stores nothing again.

**Read-only use.** A store built for reading (``qlevents events export``) must not create
anything: ``open`` connects to what exists; ``append`` is not called.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qlevents._exceptions import StoreError
from qlevents.events import StoredEvent

#: How long an idempotency key is remembered at least (seconds).
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


@dataclass(frozen=True, slots=True)
class Pruned:
    """What ``prune`` removed."""

    events: int
    through: int
    """The last position removed (0 if none)."""
    bytes_freed: int | None = None
    """Space given back to the file system, where the store can tell."""


class EventStore(abc.ABC):
    """Where accepted events go; the contract is in this module's docstring."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare the store for use: called once, before any other method."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Finish pending writes and release resources."""

    @abc.abstractmethod
    async def append(
        self, events: Sequence[StoredEvent], idempotency: IdempotencyRecord | None = None
    ) -> Replay | None:
        """Store ``events`` atomically and durably, then return None.

        With an ``idempotency`` record whose (scope, key) was claimed less than
        :data:`IDEMPOTENCY_TTL` ago, store nothing and return the earlier :class:`Replay`.
        Raises :class:`~qlevents.StoreUnavailableError` when nothing was stored, and its
        subclass :class:`~qlevents.StoreOutcomeUnknownError` when the store cannot tell.
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
        """Up to ``limit`` stored events at positions after ``after``, oldest first, each
        with its position; only ``client_key``'s events when it is given."""

    async def prune(self, received_before: str) -> Pruned:
        """Remove the longest prefix of the log whose requests were received before
        ``received_before`` (a UTC timestamp written like ``StoredEvent.received_at``), except
        the newest request."""
        raise StoreError(f"the {type(self).__name__} cannot prune events")

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Raise :class:`~qlevents.StoreUnavailableError` unless a write would succeed now
        (the readiness probe)."""
