"""The background sender: one daemon thread per process, and the counters it keeps.

It takes batches from the source (the memory queue, or the spool), delivers each with a
:class:`~qlevents.client._delivery.Delivery`, reports refused events to ``on_failure`` and
the log, and settles the batch so ``flush()`` knows. It never dies of an exception: each is
logged and the loop goes on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Final

from qlevents._exceptions import TransportError
from qlevents.client._batch import Batch, Source
from qlevents.client._build import Encoded, as_dict
from qlevents.client._config import FailureCallback, Options
from qlevents.client._delivery import Delivery, Request, Stats, new_idempotency_key
from qlevents.client._transport import Answer, Transport
from qlevents.events import ErrorEntry

log: Final = logging.getLogger("qlevents.client")


def run_delivery(
    delivery: Delivery, transport: Transport, sleep: Callable[[float], bool]
) -> Delivery:
    """Send ``delivery``'s requests until each is settled; ``sleep`` False aborts."""
    while (request := delivery.next()) is not None:
        delay = post(delivery, transport, request)
        if delay is not None and not sleep(delay):
            delivery.give_up("the client was closed before the server answered")
    return delivery


def post(delivery: Delivery, transport: Transport, request: Request) -> float | None:
    started = time.perf_counter()
    try:
        answer: Answer = transport.post(request.url, request.body, request.headers)
    except TransportError as exc:
        return delivery.failed(request, exc, time.perf_counter() - started)
    except Exception as exc:  # a broken custom transport must not kill the sender
        log.exception("the transport %r raised", transport)
        error = TransportError(f"{type(exc).__name__}: {exc}")
        return delivery.failed(request, error, time.perf_counter() - started)
    return delivery.answered(request, answer, time.perf_counter() - started)


def report_failures(
    failures: Iterable[tuple[int, list[ErrorEntry]]],
    events: list[Encoded],
    on_failure: FailureCallback | None,
) -> None:
    """Log each refused event at WARNING and hand it to ``on_failure``."""
    for index, errors in failures:
        event = as_dict(events[index])
        log.warning(
            "event not stored: %s %r: %s",
            event.get("event"),
            event.get("product_id"),
            "; ".join(f"{e.code}: {e.message}" for e in errors),
        )
        if on_failure is not None:
            try:
                on_failure(event, errors)
            except Exception:
                log.exception("the on_failure callback raised")


class Worker(threading.Thread):
    """The sender thread of one process (a forked child starts its own)."""

    def __init__(
        self,
        source: Source,
        transport: Transport,
        options: Options,
        stats: Stats,
        on_failure: FailureCallback | None,
        *,
        durable: bool,
    ) -> None:
        super().__init__(name="qlevents-sender", daemon=True)
        self.source = source
        self.transport = transport
        self.options = options
        self.stats = stats
        self.on_failure = on_failure
        #: With a spool, a batch is never given up: it waits in the spool for the server.
        self.durable = durable
        #: Its client was garbage-collected unclosed: release the transport when done.
        self.orphaned = False

    def run(self) -> None:
        try:
            self._loop()
        finally:
            if self.orphaned:
                self.transport.close()

    def _loop(self) -> None:
        while True:
            try:
                batch = self.source.take()
            except Exception:
                log.exception("the sender could not read its queue; trying again in 1 s")
                if not self.source.sleep(1.0):
                    return
                continue
            if batch is None:
                return
            try:
                self.deliver(batch)
            except Exception:
                log.exception("the sender failed on a batch of %d events", len(batch.events))
                if not self.durable:
                    self.stats.add(dropped=len(batch.events))
                self.source.settle(batch, delivered=False)
                if not self.source.sleep(1.0):
                    return

    def deliver(self, batch: Batch) -> None:
        delivery = Delivery(
            batch.events,
            batch.groups,
            key=batch.key or new_idempotency_key(),
            endpoint=self.options.endpoint,
            options=self.options,
            budget=math.inf if self.durable else self.options.retry_budget,
            stats=self.stats,
            keep_processed=False,
        )
        self.stats.add(sent=len(batch.events))
        run_delivery(delivery, self.transport, self.source.sleep)
        self.stats.add(processed=len(delivery.processed), failed=len(delivery.failures))
        report_failures(delivery.failures, batch.events, self.on_failure)
        if delivery.undelivered and not self.durable:
            self.stats.add(dropped=len(delivery.undelivered))
            log.warning(
                "%d events dropped: %s", len(delivery.undelivered), delivery.reason or "no answer"
            )
            report_failures(delivery.not_delivered(), batch.events, self.on_failure)
        # With a spool, an aborted batch stays there (same key) for the next client.
        self.source.settle(batch, delivered=not delivery.undelivered)
