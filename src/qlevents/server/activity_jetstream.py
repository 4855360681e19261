"""The activity of every node of a cluster, in every node's ledger.

On a cluster each node's recorders write their own flushes into the local ledger (as on one
machine) and hand each flush's :class:`~qlevents.server.activity.Delta` to
:class:`SharedActivity`, which publishes it to the JetStream stream ``<prefix>_activity``
(subject ``<prefix>.activity.v1``; R3 on three or more servers, on disk, kept as long as
the ledger keeps its counts, an eighth of ``--nats-max-bytes`` up to 1 GiB, the oldest
dropped first).
Every worker of every node reads that stream from the last sequence its ledger applied and
applies the other nodes' deltas (:meth:`ActivityLedger.apply_shared`: the sequence is stored
in the same transaction, so nothing counts twice). The pages read the ledger as before.

A node cut off from the cluster keeps counting locally (its pages show its own events) and
keeps its unpublished deltas in memory up to :data:`OUTBOX_BYTES`; past that it drops the
oldest deltas' live and failed rows first (their counts still go), then the oldest whole
deltas, counting both (:attr:`SharedActivity.dropped_rows`, ``dropped_deltas``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from qlevents.server.activity import KEEP_MINUTES_DAYS, ActivityLedger, ActivitySettings, Delta
from qlevents.store import jetstream_api as api
from qlevents.store.jetstream_setup import REPLICAS, connect

log: Final = logging.getLogger("qlevents.activity")

#: The activity stream's size limit (bytes): an eighth of the events stream's, at most
#: this; past it the oldest messages go.
STREAM_MAX_BYTES: Final = 1 << 30
#: Unpublished deltas a node keeps while it cannot reach the cluster (bytes, encoded).
OUTBOX_BYTES: Final = 16 << 20
#: A message's largest payload: under NATS's default 1 MiB, whatever the servers allow.
MESSAGE_BYTES: Final = 512 << 10
#: How often the outbox is published, and the stream's deltas applied at most.
PUBLISH_SECONDS: Final = 0.25
#: Messages applied in one transaction: at most this many bytes of them.
BATCH_BYTES: Final = 8 << 20
#: Seconds without a message after which the stream is subscribed to again.
IDLE_SECONDS: Final = 60.0
_encode: Final = msgspec.msgpack.Encoder().encode
_decode: Final = msgspec.msgpack.Decoder(Delta).decode


def stream_of(prefix: str) -> str:
    return f"{prefix}_activity"


def subject_of(prefix: str) -> str:
    return f"{prefix}.activity.v1"


def split(delta: Delta, limit: int = MESSAGE_BYTES) -> tuple[list[bytes], int]:
    """``delta`` as messages of at most ``limit`` bytes each (the counts in the first, the
    rows packed after), and how many rows were left out (one row alone over ``limit``)."""
    head = msgspec.structs.replace(delta, live=[], failed=[])
    encoded = _encode(delta)
    if len(encoded) <= limit:
        return [encoded], 0
    messages = [_encode(head)]
    empty = Delta(delta.origin, delta.minute)
    live: list[tuple[str, float, str, str, str, str, str]] = []
    failed: list[tuple[str, float, bytes, str]] = []
    size = dropped = 0
    overhead = len(_encode(empty)) + 16

    def close() -> None:
        nonlocal live, failed, size
        if live or failed:
            messages.append(_encode(msgspec.structs.replace(empty, live=live, failed=failed)))
        live, failed, size = [], [], 0

    for row in delta.live:
        cost = len(_encode(row))
        if cost + overhead > limit:
            dropped += 1
            continue
        if size + cost + overhead > limit:
            close()
        live.append(row)
        size += cost
    for failed_row in delta.failed:
        cost = len(_encode(failed_row))
        if cost + overhead > limit:
            dropped += 1
            continue
        if size + cost + overhead > limit:
            close()
        failed.append(failed_row)
        size += cost
    close()
    return messages, dropped


class _Outbox:
    """Encoded messages waiting to be published, bounded in bytes (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.dropped_rows = 0
        self.dropped_deltas = 0
        # [message id, payload, the delta when it may still lose its rows]
        self._queue: deque[tuple[str, bytes, Delta | None]] = deque()
        self._lock = threading.Lock()

    def put(self, delta: Delta) -> None:
        messages, dropped = split(delta)
        with self._lock:
            self.dropped_rows += dropped
            for index, payload in enumerate(messages):
                rows = delta if len(messages) == 1 and (delta.live or delta.failed) else None
                self._queue.append((f"{uuid.uuid4().hex}-{index}", payload, rows))
                self.size += len(payload)
            self._bound()

    def _bound(self) -> None:
        if self.size <= self.limit:
            return
        # First the rows (live and failed events as sent) of the oldest deltas: their counts
        # still reach the other nodes.
        for position, (msg_id, payload, rows) in enumerate(self._queue):
            if self.size <= self.limit:
                return
            if rows is None:
                continue
            lighter = _encode(msgspec.structs.replace(rows, live=[], failed=[]))
            self._queue[position] = (msg_id, lighter, None)
            self.size += len(lighter) - len(payload)
            self.dropped_rows += len(rows.live) + len(rows.failed)
        while self.size > self.limit and len(self._queue) > 1:
            _, payload, _ = self._queue.popleft()
            self.size -= len(payload)
            self.dropped_deltas += 1

    def peek(self) -> tuple[str, bytes] | None:
        with self._lock:
            return self._queue[0][:2] if self._queue else None

    def done(self, msg_id: str) -> None:
        with self._lock:
            if self._queue and self._queue[0][0] == msg_id:
                self.size -= len(self._queue.popleft()[1])

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)


class SharedActivity:
    """One worker's share of the cluster's activity: publishes its deltas, applies
    everyone's to the node's ledger. Runs on the worker's event loop (``start``/``stop``)."""

    def __init__(
        self,
        servers: Sequence[str],
        prefix: str,
        ledger: ActivityLedger,
        settings: ActivitySettings,
        *,
        max_bytes: int = STREAM_MAX_BYTES,
        outbox_bytes: int = OUTBOX_BYTES,
    ) -> None:
        self.servers = list(servers)
        self.max_bytes = max_bytes
        self.stream = stream_of(prefix)
        self.subject = subject_of(prefix)
        self.ledger = ledger
        self.settings = settings
        self._outbox = _Outbox(outbox_bytes)
        self._closing = False
        self._warned = float("-inf")
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None
        #: Told (rows, flushes) each time the outbox drops some (from the recorder's thread).
        self.drop_observer: Callable[[int, int], None] | None = None

    @property
    def dropped_rows(self) -> int:
        """Live and failed events as sent that never left this worker (its outbox was full)."""
        return self._outbox.dropped_rows

    @property
    def dropped_deltas(self) -> int:
        """Whole flushes (their counts too) that never left this worker."""
        return self._outbox.dropped_deltas

    @property
    def unpublished(self) -> int:
        return len(self._outbox)

    def offer(self, delta: Delta) -> None:
        """A flush's delta to publish (from the recorder's thread; memory only)."""
        rows, deltas = self._outbox.dropped_rows, self._outbox.dropped_deltas
        self._outbox.put(delta)
        rows, deltas = self._outbox.dropped_rows - rows, self._outbox.dropped_deltas - deltas
        dropped = rows + deltas > 0
        if dropped and self.drop_observer is not None:
            self.drop_observer(rows, deltas)
        if dropped and time.monotonic() - self._warned >= 60:  # once a minute, not a second
            self._warned = time.monotonic()
            log.warning(
                "the activity outbox is full (the cluster is out of reach): %d rows and %d"
                " flushes dropped so far",
                self._outbox.dropped_rows,
                self._outbox.dropped_deltas,
            )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="qlevents-shared-activity")

    async def stop(self, timeout: float = 2.0) -> None:
        """Publish what is left (for at most ``timeout`` seconds), then disconnect."""
        if self._nc is not None and self._nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._publish(), timeout)
        self._closing = True
        # Each step bounded: a server stopping must not wait on a cluster that went quiet.
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), timeout)

    async def _run(self) -> None:
        # Never ends the server: the cluster may be out of reach at start, or later.
        self._nc = await connect(self.servers, float("inf"), lambda: self._closing)
        applying = asyncio.create_task(self._apply_forever())
        try:
            while True:
                await asyncio.sleep(PUBLISH_SECONDS)
                with contextlib.suppress(NatsError, OSError):
                    await self._publish()
        finally:
            applying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await applying

    async def _ensure_stream(self) -> str:
        """Create the stream if missing; its identity (its creation time)."""
        assert self._nc is not None
        js = self._nc.jetstream(timeout=5)
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            try:
                facts = await api.ask_servers(self._nc, 2.0)
            except NatsError:
                facts = []
            replicas = min(REPLICAS, max((fact.cluster_size for fact in facts), default=1))
            with contextlib.suppress(APIError):  # another node made it meanwhile
                await js.add_stream(
                    StreamConfig(
                        name=self.stream,
                        description="qlevents: every node's dashboard activity (docs/dashboard.md)",
                        subjects=[self.subject],
                        storage=StorageType.FILE,
                        num_replicas=replicas,
                        discard=DiscardPolicy.OLD,
                        max_bytes=self.max_bytes,
                        max_age=KEEP_MINUTES_DAYS * 86400.0,
                    )
                )
                log.info("created the activity stream %s (R%d)", self.stream, replicas)
            info = await js.stream_info(self.stream)
        return info.created.isoformat() if info.created is not None else ""

    async def _publish(self) -> None:
        assert self._nc is not None
        js = self._nc.jetstream(timeout=2)
        while (head := self._outbox.peek()) is not None:
            msg_id, payload = head
            # The id lets the stream drop a retry of a publish whose answer was lost.
            await js.publish(self.subject, payload, headers={"Nats-Msg-Id": msg_id})
            self._outbox.done(msg_id)

    async def _apply_forever(self) -> None:
        assert self._nc is not None
        js = self._nc.jetstream(timeout=5)
        while True:
            try:
                stream_id = await self._ensure_stream()
                applied = await asyncio.to_thread(self.ledger.applied_sequence, stream_id)
                subscription = await js.subscribe(
                    self.subject,
                    stream=self.stream,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    config=ConsumerConfig(opt_start_seq=applied + 1),
                )
                try:
                    await self._apply_from(subscription)
                finally:
                    with contextlib.suppress(Exception):
                        await subscription.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the dashboard must never take the service down
                log.info("the activity stream cannot be read now (%s); trying again", exc)
                await asyncio.sleep(1)

    async def _apply_from(self, subscription: object) -> None:
        """Apply what the subscription brings, in batches; return (to subscribe again from
        the ledger's last sequence) after a reconnection or a minute without messages: a
        consumer the servers lost meanwhile is never waited on for long."""
        assert self._nc is not None
        next_msg = subscription.next_msg  # type: ignore[attr-defined]
        reconnects = self._nc.stats["reconnects"]
        idle = 0.0
        while True:
            try:
                first = await next_msg(timeout=1.0)
            except NatsTimeoutError:
                idle += 1.0
                if idle >= IDLE_SECONDS or self._nc.stats["reconnects"] != reconnects:
                    return
                continue
            idle = 0.0
            batch = [first]
            size = len(first.data)
            started = time.monotonic()
            # What already arrived goes in one transaction (a quarter of a second's, 8 MiB).
            while size < BATCH_BYTES and time.monotonic() - started < PUBLISH_SECONDS:
                try:
                    batch.append(await next_msg(timeout=0.01))
                except NatsTimeoutError:
                    break
                size += len(batch[-1].data)
            deltas = [(msg.metadata.sequence.stream, _read(msg.data)) for msg in batch]
            await asyncio.to_thread(self.ledger.apply_shared, deltas, self.settings)


def _read(payload: bytes) -> Delta:
    try:
        return _decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("an unreadable activity message (%s); skipped", exc)
        return Delta("", 0)
