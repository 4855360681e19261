"""What a background sender does with a batch, whatever it waits with (thread or task).

It gives the batch a :class:`~qlevents.client._delivery.Delivery` (``begin``), and once
the delivery is over counts the outcome, reports refused and undelivered events to
``on_failure`` and the log, and settles the batch so ``flush()`` knows (``end``). The
thread (``_worker.py``) and the task (``_task.py``) only add the I/O loop and the waits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Final

from qlevents.client._batch import Batch, Source
from qlevents.client._build import Encoded, as_dict
from qlevents.client._config import FailureCallback, Options
from qlevents.client._delivery import Delivery, Stats, new_idempotency_key
from qlevents.events import ErrorEntry

log: Final = logging.getLogger("qlevents.client")

#: Seconds a sender waits after an unexpected error before it takes the next batch.
PAUSE_AFTER_ERROR: Final = 1.0


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


class Sender:
    """The state of one background sender and its accounting of each batch."""

    def __init__(
        self,
        source: Source,
        options: Options,
        stats: Stats,
        on_failure: FailureCallback | None,
        *,
        durable: bool,
    ) -> None:
        self.source = source
        self.options = options
        self.stats = stats
        self.on_failure = on_failure
        #: With a spool, a batch is never given up: it waits in the spool for the server.
        self.durable = durable
        #: Its client was garbage-collected unclosed: release the transport when done.
        self.orphaned = False
        #: It has returned (stopped, aborted, or cancelled with its event loop).
        self.ended = False
        #: Called once it has returned.
        self.on_end: Callable[[], None] | None = None
        #: The batch being delivered: handed out again if the sender is cancelled.
        self.in_flight: Batch | None = None

    def finished(self) -> None:
        self.ended = True
        if self.on_end is not None:
            self.on_end()

    def begin(self, batch: Batch) -> Delivery:
        batch.key = batch.key or new_idempotency_key()
        if not batch.counted:
            batch.counted = True
            self.stats.add(sent=len(batch.events))
        self.in_flight = batch
        return Delivery(
            batch.events,
            batch.groups,
            key=batch.key,
            endpoint=self.options.endpoint,
            options=self.options,
            budget=math.inf if self.durable else self.options.retry_budget,
            stats=self.stats,
            keep_processed=False,
        )

    def end(self, batch: Batch, delivery: Delivery) -> None:
        self.in_flight = None
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

    def broke(self, batch: Batch) -> None:
        """Delivering ``batch`` raised (logged by the caller): it is given up, or spooled."""
        self.in_flight = None
        if not self.durable:
            self.stats.add(dropped=len(batch.events))
        self.source.settle(batch, delivered=False)

    def abandon(self) -> None:
        """Its event loop is gone mid-batch: hand the batch in flight out again."""
        batch, self.in_flight = self.in_flight, None
        if batch is not None:
            self.source.resume(batch)
