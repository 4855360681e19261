"""Reading the events log from a backend: a durable consumer, in order, at least once.

    async def price(message: EventMessage) -> None:
        ...  # message.events: one write's events of one account and kind

    async with EventConsumer("nats://10.0.0.1:4222,nats://10.0.0.2:4222", "pricing") as log:
        await log.run(price)

A message is acknowledged after ``handler`` returns, so a crash repeats at most the messages
that were being handled, and a restart with the same name resumes where the last one
stopped (JetStream keeps the consumer's place, replicated like the stream). When the handler
raises, that message and the ones fetched after it are handed back and come again, in order:
a message that always fails stops the reader there (``run`` logs and retries it), so a
handler should skip what it can never handle. Events carry unique ids: a backend that must
not count one twice after a crash can remember the ids it has seen.

Any NATS client can do the same (docs/cluster.md has the layout); this helper needs the
``server`` extra (nats-py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Final

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from qlevents.store.jetstream_layout import (
    DEFAULT_PREFIX,
    EventMessage,
    decode_event_message,
    events_subject,
    stream_name,
)

__all__ = ["EventConsumer", "EventMessage", "Handler"]

log: Final = logging.getLogger("qlevents.consumer")

Handler = Callable[[EventMessage], Awaitable[None]]


class EventConsumer:
    """A durable pull consumer named ``name`` on the events of ``account`` and ``kind``
    (all of them when not given)."""

    def __init__(
        self,
        servers: str | Sequence[str],
        name: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        account: str | None = None,
        kind: str | None = None,
        batch: int = 100,
        ack_wait: float = 30.0,
        retry_delay: float = 1.0,
    ) -> None:
        self.servers = servers.split(",") if isinstance(servers, str) else list(servers)
        self.name = name
        self.stream = stream_name(prefix)
        self.subject = events_subject(prefix, account, kind)
        self._batch = batch
        self._ack_wait = ack_wait
        self._retry_delay = retry_delay
        self._nc: Client | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def open(self) -> None:
        """Connect, and create the consumer (or update its filter) if needed."""

        async def on_error(exc: Exception) -> None:
            log.warning("NATS: %s", exc or type(exc).__name__)

        self._nc = await nats.connect(
            servers=self.servers,
            name=f"qlevents-consumer-{self.name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            error_cb=on_error,
        )
        js = self._nc.jetstream()
        config = ConsumerConfig(
            durable_name=self.name,
            filter_subject=self.subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=max(self._batch, 1000),
        )
        await js.add_consumer(self.stream, config)
        self._subscription = await js.pull_subscribe_bind(durable=self.name, stream=self.stream)

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        self._subscription = None
        if nc is not None:
            await nc.close()  # sends the acknowledgements still buffered

    async def __aenter__(self) -> EventConsumer:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def process(self, handler: Handler, *, timeout: float = 1.0) -> int:
        """Hand the next messages (up to ``batch``, waiting up to ``timeout`` seconds for the
        first) to ``handler`` one by one, in order, acknowledging each after it returns.
        Returns how many were handled. If ``handler`` raises, the message and those after it
        come again later, in order, and the exception propagates."""
        if self._nc is None or self._subscription is None:
            raise RuntimeError("the consumer is not open")
        try:
            messages = await self._subscription.fetch(self._batch, timeout=timeout)
        except TimeoutError:
            # nats-py raises its own TimeoutError, or asyncio's plain one when its no-wait
            # probe's answer comes at the deadline; the first subclasses the second.
            return 0
        handled = 0
        try:
            for msg in messages:
                await self._handle(handler, msg)
                await msg.ack()
                handled += 1
        except BaseException:
            # Back in order, at once: nothing fetched after the failure may overtake it.
            for msg in messages[handled:]:
                await msg.nak()
            raise
        finally:
            await self._nc.flush()
        return handled

    async def _handle(self, handler: Handler, msg: Msg) -> None:
        message = decode_event_message(
            msg.subject, msg.metadata.sequence.stream, msg.headers or {}, msg.data
        )
        keepalive = asyncio.create_task(self._keep_alive(msg))
        try:
            await handler(message)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _keep_alive(self, msg: Msg) -> None:
        # A handler slower than ack_wait would otherwise see its message delivered again.
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            await msg.in_progress()

    async def run(self, handler: Handler, *, stop: asyncio.Event | None = None) -> None:
        """:meth:`process` until ``stop`` is set; a handler's failure is logged, and its
        message handed to it again after ``retry_delay`` seconds."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.process(handler)
            except Exception:
                log.exception("handling an event message failed; it will come again")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._retry_delay)
