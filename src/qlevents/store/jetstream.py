"""The cluster event store: a NATS JetStream stream, replicated on three servers.

How it meets the contract of :mod:`qlevents.store.base` (docs/cluster.md says more):

**Atomic.** One ``append`` is one JetStream atomic batch: the request's events, a message per
(account, kind) split below the servers' message size, then its idempotency record (or, for
a request without a key, a claim of a store-made request id). The stream stores all of the
batch's messages or none of them.

**Durable.** A batch is acknowledged once a quorum of the stream's replicas (2 of 3) has
stored it, and ``open`` refuses servers that do not fsync every write (``sync_always``).

**Idempotent.** The record (or claim) carries ``Nats-Expected-Last-Subject-Sequence: 0``: the
batch is refused whole if its subject already holds a message, so a (scope, key) is claimed
in the same step as the events. The loser reads the winner's record (polling: it can be
refused before the winner's record is readable). Records expire after 24 h (``Nats-TTL``).

**When the store cannot tell.** A batch whose answer does not come in ``publish_timeout`` may
still be stored. ``append`` sends it again (same claim, new batch) until ``retry_seconds``
have passed: the claim makes a second copy impossible, and a refusal for the claim shows that
an earlier attempt was stored. If no attempt is answered it raises
:class:`~qlevents.StoreOutcomeUnknownError`.

**Group commit.** Appends that arrive while ``max_batches_in_flight`` batches are on their
way wait and go together, their messages in one atomic batch (up to the servers' batch
limit): one commit and one Raft entry for many requests, as SQLite's group commit shares an
fsync. All of them are stored or none; when a group is not answered with a plain ack (a
claim refused, a timeout, the stream full), each of its requests is sent again alone
through the path above, whose claims make that safe.

**Positions** are ``first_sequence << 10 | index`` (:mod:`qlevents.store.jetstream_layout`).
"""

from __future__ import annotations

import asyncio
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
    REQUEST,
    Outgoing,
    check_prefix,
    claim_message,
    claim_subject,
    decode_event_message,
    event_messages,
    events_subject,
    record_messages,
    record_subject,
    stream_name,
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


@dataclass(slots=True)
class _Waiting:
    """An append waiting for its group: its messages, and how it ended."""

    messages: list[Outgoing]
    size: int
    events: int
    attempts: list[int]
    done: asyncio.Future[None]
    grouped: bool = False
    """Sent in a group that was not answered with a plain ack: send it alone."""
    unknown: bool = False
    """That group went unanswered: it may have been stored."""
    holds_slot: bool = False
    """Nothing else was waiting: it is sent alone in a slot of its own, to release after."""


class _Missing:
    """No record found (yet) for a claimed key."""


_MISSING: Final = _Missing()


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
        max_batches_in_flight: int = 4,
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
        self._waiting: list[_Waiting] = []
        self._in_flight = 0
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
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), 5.0)
            except (TimeoutError, NatsError) as exc:
                log.warning("closing the NATS connection: %s", exc)

    def _require_open(self) -> Client:
        if self._nc is None:
            raise StoreUnavailableError("the event store is not open")
        return self._nc

    # --- writes: one atomic batch per append ---------------------------------------------

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
        request_id = uuid.uuid4().hex
        room = self._max_payload - _HEADER_ROOM
        messages = event_messages(self.prefix, events, request_id, room)
        if idempotency is None:
            messages.append(claim_message(self.prefix, request_id))
        else:
            messages.extend(record_messages(self.prefix, idempotency, request_id, room))
        if len(messages) > self._max_batch:
            raise StoreUnavailableError(
                f"this request needs {len(messages)} messages in one atomic batch, more than"
                f" the NATS servers take ({self._max_batch}: jetstream.limits.batch.max_msgs)"
            )
        started = time.monotonic()
        attempts = [0]
        waiting: _Waiting | None = None
        outcome: Literal["stored", "replayed", "full", "unavailable", "unknown"] = "unknown"
        try:
            waiting = await self._in_group(nc, messages, len(events), attempts)
            if waiting.holds_slot:
                try:
                    replay = await self._publish(nc, messages, idempotency, request_id, attempts)
                finally:
                    self._release_slot()
            elif waiting.grouped:
                replay = await self._publish(
                    nc, messages, idempotency, request_id, attempts, unknown=waiting.unknown
                )
            else:
                replay = None  # stored in a group: its sender reported the commit
            outcome = "stored" if replay is None else "replayed"
            return replay
        except StoreOutcomeUnknownError:
            outcome = "unknown"
            raise
        except _StreamFullError:
            outcome = "full"
            raise
        except StoreUnavailableError:
            outcome = "unavailable"
            raise
        finally:
            seconds = time.monotonic() - started
            alone = waiting.holds_slot or waiting.grouped if waiting is not None else False
            if outcome == "stored" and alone and self._observer is not None:
                self._observer(CommitStats(1, len(events), seconds))
            if self._publish_observer is not None:
                self._publish_observer(PublishStats(outcome, seconds, attempts[0], len(events)))

    async def _in_group(
        self, nc: Client, messages: list[Outgoing], events: int, attempts: list[int]
    ) -> _Waiting:
        """With a batch slot free, these messages go alone in it (``holds_slot``: ``append``
        sends them and releases it). Otherwise they wait for the next group, which the batch
        that frees a slot sends; returns when that group is answered: stored, or each of its
        appends to be sent alone (``grouped``)."""
        size = sum(len(message.payload) for message in messages)
        waiting = _Waiting(
            messages, size, events, attempts, asyncio.get_running_loop().create_future()
        )
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            waiting.holds_slot = True
            return waiting
        self._waiting.append(waiting)
        try:
            await asyncio.shield(waiting.done)
        except asyncio.CancelledError:
            if waiting in self._waiting:  # not sent: nobody will wait for it
                self._waiting.remove(waiting)
            raise
        return waiting

    async def _send_group(self, nc: Client) -> None:
        """In the slot a batch freed: the oldest waiting appends that fit one batch, sent
        together once: stored, or each of them handed back to be sent alone."""
        group: list[_Waiting] = []
        count = size = 0
        while self._waiting:
            first = self._waiting[0]
            fits = (
                count + len(first.messages) <= self._max_batch and size + first.size <= _GROUP_BYTES
            )
            if group and not fits:
                break
            group.append(self._waiting.pop(0))
            count, size = count + len(first.messages), size + first.size
        if not group:  # the appends that were waiting were cancelled meanwhile
            self._release_slot()
            return
        stored = unknown = False
        started = time.monotonic()
        try:
            for waiting in group:
                waiting.attempts[0] += 1
            messages = [message for waiting in group for message in waiting.messages]
            ack = await api.publish_batch(nc, messages, self._publish_timeout)
            stored = ack.error is None
            if stored and self._observer is not None:  # one commit, as SQLite reports one
                events = sum(waiting.events for waiting in group)
                self._observer(CommitStats(len(group), events, time.monotonic() - started))
        except NatsTimeoutError:
            unknown = True
        except (NatsError, OSError) as exc:
            log.info("a batch of %d appends was not sent (%s); each is sent alone", len(group), exc)
        finally:
            for waiting in group:
                waiting.grouped, waiting.unknown = not stored, unknown
                waiting.done.set_result(None)
            self._release_slot()

    def _release_slot(self) -> None:
        """A batch came back: its slot goes to the appends waiting, as one group."""
        if self._waiting and self._nc is not None:
            task = asyncio.get_running_loop().create_task(self._send_group(self._nc))
            self._group_tasks.add(task)
            task.add_done_callback(self._group_tasks.discard)
            return
        self._in_flight -= 1
        for waiting in self._waiting:  # closed: each append learns it on its own
            waiting.grouped = True
            waiting.done.set_result(None)
        self._waiting.clear()

    async def _publish(
        self,
        nc: Client,
        messages: list[Outgoing],
        idempotency: IdempotencyRecord | None,
        request_id: str,
        attempts: list[int],
        *,
        unknown: bool = False,
    ) -> Replay | None:
        """Send the batch until it is answered; the claim in it makes every attempt after
        the first either store nothing or find the first one's record. ``unknown``: an
        earlier attempt (in a group) went unanswered and may have been stored."""
        deadline = time.monotonic() + self._retry_seconds
        reason = "no attempt was made"
        delay = 0.05
        while (remaining := deadline - time.monotonic()) > 0:
            if nc.is_closed:
                reason = "the event store was closed"
                break
            if not nc.is_connected:
                reason = "not connected to any NATS server"
            else:
                attempts[0] += 1
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
                        return None
                    if error.err_code in _CLAIMED_CODES:
                        found = await self._await_claim(nc, idempotency, request_id, deadline)
                        if not isinstance(found, _Missing):
                            return found
                        reason = "the claim is held by a write that is not stored (yet)"
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

    async def _await_claim(
        self,
        nc: Client,
        idempotency: IdempotencyRecord | None,
        request_id: str,
        deadline: float,
    ) -> Replay | _Missing | None:
        """After the claim was refused: None if it is this request's own (an earlier attempt
        was stored), the first request's Replay if it is another's, _MISSING if no record
        shows up (the other batch, refused or lost, may never be stored)."""
        until = min(deadline, time.monotonic() + max(self._publish_timeout, 1.0))
        while True:
            try:
                if idempotency is None:
                    subject = claim_subject(self.prefix, request_id)
                    claim = await api.get_message(
                        nc, self.stream, {"last_by_subj": subject}, self._publish_timeout
                    )
                    if claim is not None:
                        return None
                else:
                    found = await self._read_record(nc, idempotency.scope, idempotency.key)
                    if found is not None:
                        owner, replay = found
                        return None if owner == request_id else replay
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
        owner = headers.get(REQUEST, "")
        pieces = [first.data]
        for number in range(1, int(headers.get(PARTS, "1"))):
            piece = await api.get_message(
                nc, self.stream, {"last_by_subj": f"{subject}.{number}"}, timeout
            )
            if piece is None or piece.headers.get(REQUEST) != owner:
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
