"""The cluster event store: a NATS JetStream stream, replicated on three servers.

How it meets the contract of :mod:`qlevents.store.base` (docs/cluster.md says more):

**Atomic.** Appends are stored in *writes*: one JetStream atomic batch holding one append,
or several that arrived together (group commit, below). A write's events go a message per
(account, kind), split below the servers' message size, then the idempotency record of each
append with a key (or, when none has one, a claim of a store-made write id). The stream
stores all of the batch's messages or none of them.

**Durable.** A batch is acknowledged once a quorum of the stream's replicas (2 of 3) has
stored it, and ``open`` refuses servers that do not fsync every write (``sync_always``).

**Idempotent.** The records (or the claim) carry ``Nats-Expected-Last-Subject-Sequence: 0``:
the batch is refused whole if one of their subjects already holds a message, so a (scope,
key) is claimed in the same step as the events. The loser reads the winner's record
(polling: it can be refused before the winner's record is readable); the appends of a write
whose keys were used before get their first answers, and the others go again in a new write.
Records expire after 24 h (``Nats-TTL``).

**When the store cannot tell.** A batch whose answer does not come in ``publish_timeout`` may
still be stored. The write is sent again (same records or claim, new batch) until
``retry_seconds`` after its oldest append was made (waiting for the write counts; each write
gets at least one attempt): its claims make a second copy impossible, and a refusal that
names the write's own id shows that an earlier attempt was stored. If no attempt is
answered, its appends raise :class:`~qlevents.StoreOutcomeUnknownError`.

**Group commit.** Appends that arrive while ``max_batches_in_flight`` writes are on their
way wait, and go together in the next write (up to the servers' batch limit, 8 MiB and 1,024
events): their events merged into one message per (account, kind), one claim, one commit
and one Raft entry for all, as SQLite's group commit shares an fsync. Per message and per
batch costs dominate what the NATS servers spend, so a group of n one-event requests costs
them about what one n-event request does. A write starts at the event loop's next turn
(the appends already arriving join it), and only when it is worth a Raft round:
``min_parallel_events`` events (8) always are. With a write in flight, fewer wait for it to
come back (Nagle's rule, for Raft rounds). With none in flight they go at once, unless the
last write was full: the requests it answered are then coming back, and the first to arrive
waits up to ``linger`` (1 ms) for the others rather than going alone. Light traffic never
waits.

**Positions** are ``first_sequence << 10 | index`` (:mod:`qlevents.store.jetstream_layout`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from qlevents._exceptions import StoreOutcomeUnknownError, StoreUnavailableError
from qlevents.events import StoredEvent
from qlevents.store import jetstream_api as api
from qlevents.store import jetstream_setup as setup
from qlevents.store.base import (
    CommitObserver,
    CommitStats,
    EventStore,
    IdempotencyRecord,
    Pruned,
    Replay,
)
from qlevents.store.jetstream_layout import (
    DEFAULT_PREFIX,
    FINGERPRINT,
    MAX_APPEND_EVENTS,
    PARTS,
    POSITION_BITS,
    WRITE,
    EventChunk,
    Outgoing,
    check_prefix,
    claim_message,
    claim_subject,
    decode_event_message,
    event_chunks,
    events_subject,
    record_messages,
    record_subject,
    stream_name,
    write_messages,
)

log: Final = logging.getLogger("qlevents.store")

#: Room left in each message for its headers (the event indexes: at most a few KiB).
_HEADER_ROOM: Final = 16 * 1024
#: Errors after which nothing was stored and a later attempt may succeed.
_RETRY_CODES: Final = frozenset({10176, 10210, 10008})  # incomplete, too many batches, no JS
_FULL_CODES: Final = frozenset({api.STORE_FAILED, api.STORAGE_EXCEEDED, api.INSUFFICIENT_RESOURCES})
_CLAIMED_CODES: Final = frozenset({api.WRONG_LAST_SEQUENCE, api.WRONG_LAST_SEQUENCE_IN_FLIGHT})
#: The most payload bytes one group batch carries (a request alone may carry its 5 MiB).
_GROUP_BYTES: Final = 8 << 20
_NOT_SENT: Final = (
    NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
)


@dataclass(frozen=True, slots=True)
class PublishStats:
    """Reported to the publish observer after every append that sent something."""

    outcome: Literal["stored", "replayed", "full", "unavailable", "unknown"]
    """stored; replayed (the key was used); full (the stream is full: 503); unavailable
    (nothing stored: 503); unknown (StoreOutcomeUnknownError: 503)."""
    seconds: float
    """From the first attempt to the answer."""
    attempts: int
    """Batches sent (more than 1: retries)."""
    events: int


PublishObserver = Callable[[PublishStats], None]


@dataclass(slots=True, eq=False)
class _Append:
    """An append on its way: its events (encoded), its key, and what became of it."""

    chunks: list[EventChunk]
    events: int
    idempotency: IdempotencyRecord | None
    done: asyncio.Future[None]
    made: float
    """When (monotonic): its answer comes within the store's retry time of it."""
    record_subject: str | None = None
    messages: int = 0
    """The most messages it adds to a write (its chunks, its record's parts or a claim)."""
    size: int = 0
    """Its payload bytes."""
    attempts: int = 0
    """Batches that carried it."""
    outcome: Literal["stored", "replayed", "full", "unavailable", "unknown"] = "unknown"
    replay: Replay | None = None
    error: StoreUnavailableError | None = None

    def finish(
        self,
        outcome: Literal["stored", "replayed", "full", "unavailable", "unknown"] = "unknown",
        *,
        replay: Replay | None = None,
        error: StoreUnavailableError | None = None,
    ) -> None:
        """Its outcome, once (later calls change nothing)."""
        if self.done.done():
            return
        self.outcome, self.replay, self.error = outcome, replay, error
        self.done.set_result(None)


class _Missing:
    """No record found (yet) for a claimed key."""


class _Stored:
    """The claim refused is the write's own: an earlier attempt of it was stored."""


_MISSING: Final = _Missing()
_STORED: Final = _Stored()


class JetStreamEventStore(EventStore):
    """Events in the stream ``<PREFIX>`` on the NATS servers ``servers``."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        max_bytes: int = 10 << 30,
        publish_timeout: float = 2.0,
        retry_seconds: float = 10.0,
        open_timeout: float = 30.0,
        allow_lazy_fsync: bool = False,
        observer: CommitObserver | None = None,
        publish_observer: PublishObserver | None = None,
        read_only: bool = False,
        max_batches_in_flight: int = 2,
        min_parallel_events: int = 8,
        linger: float = 0.001,
    ) -> None:
        self.servers = list(servers)
        self.prefix = check_prefix(prefix)
        self.stream = stream_name(prefix)
        #: Only reads (the CLI's export): open() creates nothing and checks no server setting.
        self.read_only = read_only
        self._max_bytes = max_bytes
        self._publish_timeout = publish_timeout
        self._retry_seconds = retry_seconds
        self._open_timeout = open_timeout
        self._allow_lazy_fsync = allow_lazy_fsync
        self._observer = observer
        self._publish_observer = publish_observer
        self._nc: Client | None = None
        self._max_batch = api.DEFAULT_BATCH_MESSAGES
        self._max_payload = 1 << 20
        #: Group commit: appends waiting for a batch slot, batches on their way, and the
        #: tasks sending groups (a freed slot passes straight to the next group).
        self._max_in_flight = max_batches_in_flight
        self._waiting: collections.deque[_Append] = collections.deque()
        self._in_flight = 0
        self._waiting_events = 0
        self._min_parallel_events = min_parallel_events
        self._linger = linger
        self._linger_timer: asyncio.TimerHandle | None = None
        self._last_write_full = False
        self._start_pending = False  # a write's task is made, and has not taken its group
        self._group_tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        deadline = time.monotonic() + self._open_timeout
        self._nc = nc = await setup.connect(self.servers, deadline, lambda: self._nc is None)
        self._max_payload = nc.max_payload
        timeout = self._publish_timeout
        try:
            if self.read_only:
                await setup.retrying(
                    deadline,
                    f"the event stream {self.stream}",
                    lambda: setup.require_stream(nc, self.stream, self.servers, timeout),
                )
                return
            facts = await setup.check_servers(nc, allow_lazy_fsync=self._allow_lazy_fsync)
            self._max_batch = facts.max_batch_messages
            self._max_payload = min(self._max_payload, facts.max_payload or self._max_payload)
            await setup.retrying(
                deadline,
                f"the event stream {self.stream}",
                lambda: setup.ensure_stream(
                    nc,
                    self.stream,
                    self.prefix,
                    max_bytes=self._max_bytes,
                    cluster_size=facts.size,
                    timeout=timeout,
                ),
            )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if not self._in_flight:  # else the write that comes back tells them
            self._fail_waiting()
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), 5.0)
            except (TimeoutError, NatsError) as exc:
                log.warning("closing the NATS connection: %s", exc)

    def _require_open(self) -> Client:
        if self._nc is None:
            raise StoreUnavailableError("the event store is not open")
        return self._nc

    # --- writes: one atomic batch per write of one or more appends ---------------------

    async def append(
        self, events: Sequence[StoredEvent], idempotency: IdempotencyRecord | None = None
    ) -> Replay | None:
        nc = self._require_open()
        if self.read_only:
            raise StoreUnavailableError("the event store is open only for reading")
        if not events and idempotency is None:
            return None
        if len(events) > MAX_APPEND_EVENTS:
            raise ValueError(f"at most {MAX_APPEND_EVENTS} events in one append")
        room = self._max_payload - _HEADER_ROOM
        pending = _Append(
            event_chunks(self.prefix, events, room),
            len(events),
            idempotency,
            asyncio.get_running_loop().create_future(),
            time.monotonic(),
        )
        if idempotency is not None:
            pending.record_subject = record_subject(self.prefix, idempotency.scope, idempotency.key)
            parts = max(1, -(-len(idempotency.response) // room))
            pending.messages = len(pending.chunks) + parts
            pending.size = sum(len(c.payload) for c in pending.chunks) + len(idempotency.response)
        else:
            pending.messages = len(pending.chunks) + 1
            pending.size = sum(len(c.payload) for c in pending.chunks)
        if pending.messages > self._max_batch:
            raise StoreUnavailableError(
                f"this request needs {pending.messages} messages in one atomic batch, more"
                f" than the NATS servers take ({self._max_batch}: jetstream.limits.batch.max_msgs)"
            )
        try:
            await self._stored(nc, pending)
        finally:
            if self._publish_observer is not None:
                self._publish_observer(
                    PublishStats(
                        pending.outcome,
                        time.monotonic() - pending.made,
                        pending.attempts,
                        len(events),
                    )
                )
        if pending.error is not None:
            raise pending.error
        return pending.replay

    async def _stored(self, nc: Client, pending: _Append) -> None:
        """``pending`` waits for the next write; returns when it has its outcome. When that
        write starts: :meth:`_start_if_worth`."""
        self._waiting.append(pending)
        self._waiting_events += max(1, pending.events)
        self._start_if_worth(nc)
        try:
            await pending.done
        except asyncio.CancelledError:
            if pending in self._waiting:  # not sent: nobody will wait for it
                self._waiting.remove(pending)
                self._waiting_events -= max(1, pending.events)
            raise

    def _start_if_worth(self, nc: Client) -> None:
        """Start a write for the appends waiting if a slot is free and it is worth a Raft
        round. ``min_parallel_events`` events (an append without events counts as one) always
        are. Fewer wait for a write in flight to come back; with none in flight they go at
        once, unless the last write was full: then the requests it answered are on their way
        back, and they wait up to ``linger`` for them."""
        if not self._waiting or self._in_flight >= self._max_in_flight or self._start_pending:
            return
        if self._waiting_events < self._min_parallel_events:
            if self._in_flight:
                return
            if self._last_write_full and self._linger > 0:
                if self._linger_timer is None:
                    loop = asyncio.get_running_loop()
                    self._linger_timer = loop.call_later(self._linger, self._linger_over, nc)
                return
        self._start_group(nc)

    def _linger_over(self, nc: Client) -> None:
        self._linger_timer = None
        if self._waiting and not self._in_flight and not self._start_pending:
            self._start_group(nc)

    def _start_group(self, nc: Client) -> None:
        """A write in a free slot: it takes its group at the event loop's next turn."""
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._in_flight += 1
        self._start_pending = True
        task = asyncio.get_running_loop().create_task(self._send_group(nc))
        self._group_tasks.add(task)
        task.add_done_callback(self._group_tasks.discard)

    async def _send_group(self, nc: Client) -> None:
        """In a batch slot: the oldest waiting appends that fit one write, written together."""
        group: list[_Append] = []
        messages = size = events = 0
        subjects: set[str] = set()
        waiting = self._waiting
        self._start_pending = False
        while waiting:
            first = waiting[0]
            fits = (
                messages + first.messages <= self._max_batch
                and size + first.size <= _GROUP_BYTES
                and events + first.events <= MAX_APPEND_EVENTS
                and first.record_subject not in subjects  # the same key twice: one waits
            )
            if group and not fits:
                break
            group.append(waiting.popleft())
            self._waiting_events -= max(1, first.events)
            messages += first.messages
            size += first.size
            events += first.events
            if first.record_subject is not None:
                subjects.add(first.record_subject)
        self._last_write_full = events >= self._min_parallel_events
        if waiting:  # more than one write takes: the next may go in the other slot
            self._start_if_worth(nc)
        try:
            if group:  # else the appends that were waiting were cancelled meanwhile
                await self._write(nc, group)
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        """A write came back: its slot goes to the appends waiting, as the next group, if
        that is worth a round (:meth:`_start_if_worth`)."""
        self._in_flight -= 1
        if self._nc is not None:
            self._start_if_worth(self._nc)
        elif not self._in_flight:
            self._fail_waiting()

    def _fail_waiting(self) -> None:
        """Closed: the appends still waiting will never be sent."""
        for pending in self._waiting:
            pending.finish(error=StoreUnavailableError("the event store was closed"))
        self._waiting.clear()
        self._waiting_events = 0

    async def _write(self, nc: Client, group: list[_Append]) -> None:
        """Store ``group``'s appends as one write and give each its outcome."""
        started = time.monotonic()
        try:
            stored = await self._publish(nc, group)
            if stored and self._observer is not None:  # one commit, as SQLite reports one
                events = sum(pending.events for pending in stored)
                self._observer(CommitStats(len(stored), events, time.monotonic() - started))
            for pending in stored:
                pending.finish(outcome="stored")
        except StoreUnavailableError as exc:
            outcome: Literal["full", "unavailable", "unknown"] = (
                "unknown"
                if isinstance(exc, StoreOutcomeUnknownError)
                else "full"
                if isinstance(exc, _StreamFullError)
                else "unavailable"
            )
            for pending in group:
                pending.finish(outcome=outcome, error=exc)
        finally:  # cancelled: the appends learn that nothing may be known
            for pending in group:
                pending.finish(
                    error=StoreOutcomeUnknownError("the write was interrupted; it may be stored")
                )

    def _messages(self, group: Sequence[_Append], write_id: str) -> list[Outgoing]:
        """The write's batch: its events, merged per (account, kind); the record of each
        append with a key; a claim of the write's id when none has one."""
        room = self._max_payload - _HEADER_ROOM
        messages = write_messages(
            self.prefix, [(pending.events, pending.chunks) for pending in group], write_id, room
        )
        records = [pending.idempotency for pending in group if pending.idempotency is not None]
        for idempotency in records:
            messages.extend(record_messages(self.prefix, idempotency, write_id, room))
        if not records:
            messages.append(claim_message(self.prefix, write_id))
        return messages

    async def _publish(self, nc: Client, group: list[_Append]) -> list[_Append]:
        """Send the write until it is answered; the claims in it make every attempt after
        the first either store nothing or find the first one's records. Returns the appends
        stored; the others were replays of keys used before (their ``replay`` is set).

        It tries until ``retry_seconds`` after its oldest append was made (the time spent
        waiting for the write counts), but at least one publish timeout."""
        oldest = min(pending.made for pending in group)
        deadline = max(
            oldest + self._retry_seconds,
            time.monotonic() + min(self._publish_timeout, self._retry_seconds),
        )
        write_id = uuid.uuid4().hex
        messages = self._messages(group, write_id)
        unknown = False  # an attempt went unanswered: it may have been stored
        reason = "no attempt was made"
        delay = 0.05
        while (remaining := deadline - time.monotonic()) > 0:
            if nc.is_closed:
                reason = "the event store was closed"
                break
            if not nc.is_connected:
                reason = "not connected to any NATS server"
            else:
                for pending in group:
                    pending.attempts += 1
                timeout = min(self._publish_timeout, remaining)
                try:
                    ack = await api.publish_batch(nc, messages, timeout)
                except NatsTimeoutError:
                    unknown = True
                    reason = f"the stream did not answer in {timeout:.1f} s"
                    continue
                except _NOT_SENT as exc:
                    reason = str(exc) or type(exc).__name__
                else:
                    error = ack.error
                    if error is None:
                        return group
                    if error.err_code in _CLAIMED_CODES:
                        found = await self._await_claims(nc, group, write_id, deadline)
                        if isinstance(found, _Stored):
                            return group
                        if isinstance(found, _Missing):
                            reason = "a claim is held by a write that is not stored (yet)"
                            continue
                        # Keys used before: no attempt of this write can ever be stored.
                        for pending, replay in found.items():
                            pending.finish(outcome="replayed", replay=replay)
                        group = [pending for pending in group if pending not in found]
                        if not group:
                            return group
                        write_id = uuid.uuid4().hex
                        messages = self._messages(group, write_id)
                        unknown = False
                        continue
                    detail = f"{error.description} (error {error.err_code})"
                    if error.err_code in _FULL_CODES:
                        if unknown:
                            raise StoreOutcomeUnknownError(f"the event stream is full: {detail}")
                        raise _StreamFullError(
                            "the service's event store is full until its operators make room:"
                            f" {detail}",
                            10.0,
                        )
                    if error.err_code not in _RETRY_CODES and error.code < 500:
                        if unknown:
                            raise StoreOutcomeUnknownError(f"JetStream refused: {detail}")
                        raise StoreUnavailableError(f"JetStream refused the events: {detail}")
                    reason = detail
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
        if unknown:
            raise StoreOutcomeUnknownError(
                f"the event stream did not confirm the events in {self._retry_seconds:.0f} s"
                f" ({reason}); they may be stored"
            )
        raise StoreUnavailableError(
            f"the event stream did not take the events in {self._retry_seconds:.0f} s ({reason})"
        )

    async def _await_claims(
        self, nc: Client, group: list[_Append], write_id: str, deadline: float
    ) -> _Stored | _Missing | dict[_Append, Replay]:
        """After a claim was refused: _STORED if the claim is the write's own (an earlier
        attempt was stored), the first answers of the appends whose keys other writes hold,
        _MISSING if no record shows up (the other batch, refused or lost, may never be
        stored)."""
        until = min(deadline, time.monotonic() + max(self._publish_timeout, 1.0))
        keyed = [pending for pending in group if pending.idempotency is not None]
        while True:
            try:
                if not keyed:
                    subject = claim_subject(self.prefix, write_id)
                    claim = await api.get_message(
                        nc, self.stream, {"last_by_subj": subject}, self._publish_timeout
                    )
                    if claim is not None:
                        return _STORED
                replays: dict[_Append, Replay] = {}
                for pending in keyed:
                    assert pending.idempotency is not None
                    found = await self._read_record(
                        nc, pending.idempotency.scope, pending.idempotency.key
                    )
                    if found is not None:
                        owner, replay = found
                        if owner == write_id:
                            return _STORED
                        replays[pending] = replay
                if replays:
                    return replays
            except (NatsError, api.JetStreamApiError) as exc:
                log.info("reading a claimed key's record: %s", exc)
            if time.monotonic() >= until:
                return _MISSING
            await asyncio.sleep(0.02)

    async def _read_record(self, nc: Client, scope: str, key: str) -> tuple[str, Replay] | None:
        """The record of (scope, key): the request that claimed it and its answer."""
        subject = record_subject(self.prefix, scope, key)
        timeout = self._publish_timeout
        first = await api.get_message(nc, self.stream, {"last_by_subj": subject}, timeout)
        if first is None:
            return None
        headers = first.headers
        owner = headers.get(WRITE, "")
        pieces = [first.data]
        for number in range(1, int(headers.get(PARTS, "1"))):
            piece = await api.get_message(
                nc, self.stream, {"last_by_subj": f"{subject}.{number}"}, timeout
            )
            if piece is None or piece.headers.get(WRITE) != owner:
                return None  # expiring: the rest of it is gone
            pieces.append(piece.data)
        return owner, Replay(bytes.fromhex(headers.get(FINGERPRINT, "")), b"".join(pieces))

    async def find_replay(self, scope: str, key: str) -> Replay | None:
        nc = self._nc
        if nc is None:
            return None
        try:
            found = await self._read_record(nc, scope, key)
        except (NatsError, api.JetStreamApiError, ValueError):
            return None  # not knowing is safe: the caller refuses the request as it would have
        return None if found is None else found[1]

    # --- reads ---------------------------------------------------------------------------

    async def read(
        self, after: int = 0, limit: int = 1000, client_key: str | None = None
    ) -> list[tuple[int, StoredEvent]]:
        nc = self._require_open()
        subject = events_subject(self.prefix, client_key)
        sequence = max(after >> POSITION_BITS, 1)
        found: list[tuple[int, StoredEvent]] = []
        request: list[tuple[int, StoredEvent]] = []  # the events of one request
        request_first = 0

        def take_request() -> None:
            request.sort(key=lambda pair: pair[0])
            found.extend(pair for pair in request if pair[0] > after)
            request.clear()

        try:
            while len(found) < limit:
                # Answered by the leader, apart from any atomic batch being stored: a
                # request's messages are seen all or none.
                stored = await api.get_message(
                    nc,
                    self.stream,
                    {"seq": sequence, "next_by_subj": subject},
                    self._publish_timeout,
                )
                if stored is None:
                    break
                message = decode_event_message(
                    stored.subject, stored.seq, stored.headers, stored.data
                )
                if message.first_sequence != request_first:
                    take_request()
                    request_first = message.first_sequence
                request.extend(zip(message.positions, message.events, strict=True))
                sequence = stored.seq + 1
            else:
                return found[:limit]
        except (NatsError, api.JetStreamApiError) as exc:
            raise StoreUnavailableError(f"cannot read the event stream: {exc}") from exc
        take_request()
        return found[:limit]

    async def prune(self, received_before: str) -> Pruned:
        """Purge the event messages of the oldest requests received before ``received_before``
        (the newest request stays, as the contract says; idempotency records keep their own
        24 h). One message get per message purged: for a regular retention, prefer this
        over a stream age limit only where positions must stay exact."""
        nc = self._require_open()
        subject = events_subject(self.prefix)
        sequence, keep_from, events = 1, 0, 0
        pending: list[tuple[int, int]] = []  # (first sequence, events) of one request
        try:
            newest = await api.get_message(
                nc, self.stream, {"last_by_subj": subject}, self._publish_timeout
            )
            if newest is None:
                return Pruned(events=0, through=0)
            last_request = decode_event_message(
                newest.subject, newest.seq, newest.headers, newest.data
            ).first_sequence
            while True:
                stored = await api.get_message(
                    nc, self.stream, {"seq": sequence, "next_by_subj": subject},
                    self._publish_timeout,
                )  # fmt: skip
                if stored is None:
                    break
                message = decode_event_message(
                    stored.subject, stored.seq, stored.headers, stored.data
                )
                if message.first_sequence == last_request or any(
                    e.received_at >= received_before for e in message.events
                ):
                    keep_from = message.first_sequence
                    break
                pending.append((message.first_sequence, len(message.events)))
                sequence = stored.seq + 1
            if not pending:
                return Pruned(events=0, through=0)
            events = sum(count for _, count in pending)
            through = max(first for first, _ in pending)
            await api.purge(nc, self.stream, subject, keep_from, self._publish_timeout)
        except (NatsError, api.JetStreamApiError) as exc:
            raise StoreUnavailableError(f"cannot prune the event stream: {exc}") from exc
        return Pruned(
            events=events, through=(through << POSITION_BITS) | ((1 << POSITION_BITS) - 1)
        )

    async def check_writable(self) -> None:
        nc = self._require_open()
        if not nc.is_connected:
            raise StoreUnavailableError("not connected to any NATS server")
        try:
            info = await api.stream_info(nc, self.stream, min(self._publish_timeout, 1.0))
        except (NatsError, api.JetStreamApiError) as exc:
            raise StoreUnavailableError(f"the event stream does not answer: {exc}") from exc
        cluster = info.cluster
        if cluster is None:
            return
        if cluster.leader is None:
            raise StoreUnavailableError("the event stream has no leader")
        replicas = max(info.config.num_replicas, 1)
        current = 1 + sum(1 for peer in cluster.replicas if _answering(peer))
        if current < replicas // 2 + 1:
            raise StoreUnavailableError(
                f"only {current} of the event stream's {replicas} replicas are current: no quorum"
            )


#: A replica the stream's leader has not heard from for this long is counted as lost. NATS
#: marks it not current only after 10 s; an idle replica is heard from every 1-2 s (measured:
#: at most 1.8 s in 10 s of idle stream), so /readyz turns 503 about 5 s after a quorum is lost.
PEER_SILENT_NS: Final = 5_000_000_000


def _answering(peer: api.PeerInfo) -> bool:
    return peer.current and not peer.offline and peer.active < PEER_SILENT_NS


class _StreamFullError(StoreUnavailableError):
    """The stream is at its size limit (discard new): nothing was stored."""
