"""What a background sender does with a batch, whatever it waits with (thread or task).

It gives the batch a :class:`~qlevents.client._delivery.Delivery` (``begin``), and once
the delivery is over counts the outcome, reports refused and undelivered events to
``on_failure`` and the log, and settles the batch so ``flush()`` knows (``end``). The
thread (``_worker.py``) and the task (``_task.py``) only add the I/O loop and the waits.

The log says what became of events in one line per cause and batch, with a count and an
example, never a line per event: an outage of 10,000 events is one line, not 10,000.
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
from qlevents.client._outcome import NOT_DELIVERED, Outcome
from qlevents.events import ErrorEntry

log: Final = logging.getLogger("qlevents.client")

#: Seconds a sender waits after an unexpected error before it takes the next batch.
PAUSE_AFTER_ERROR: Final = 1.0


def report_failures(
    failures: Iterable[tuple[int, list[ErrorEntry]]],
    events: list[Encoded],
    on_failure: FailureCallback | None,
) -> None:
    """Log the refused events at WARNING, one line per error code (its count, the first
    event's message), and hand each event to ``on_failure``."""
    codes: dict[str, tuple[int, str]] = {}
    for index, errors in failures:
        first = errors[0] if errors else ErrorEntry(None, None, "refused", "no reason given.")
        count, example = codes.get(first.code, (0, ""))
        if not example:
            event = as_dict(events[index])
            example = f"{event.get('event')} {event.get('product_id')!r}: {first.message}"
        codes[first.code] = (count + 1, example)
        call_on_failure(on_failure, events[index], errors)
    for code, (count, example) in codes.items():
        log.warning("%d events not stored: %s (the first: %s)", count, code, example)


def call_on_failure(
    on_failure: FailureCallback | None, event: Encoded, errors: list[ErrorEntry]
) -> None:
    if on_failure is not None:
        try:
            on_failure(as_dict(event), errors)
        except Exception:
            log.exception("the on_failure callback raised")


class Drops:
    """Events dropped (never answered for), by cause: one WARNING line per cause."""

    def __init__(self) -> None:
        #: cause -> (the first reason given for it, the events)
        self.by_cause: dict[str, tuple[str, list[Encoded]]] = {}

    def add(self, cause: str, reason: str, events: Iterable[Encoded]) -> None:
        self.by_cause.setdefault(cause, (reason, []))[1].extend(events)

    def merge(self, other: Drops) -> None:
        for cause, (reason, events) in other.by_cause.items():
            self.add(cause, reason, events)

    def __len__(self) -> int:
        return sum(len(events) for _, events in self.by_cause.values())

    def report(self, what: str, on_failure: FailureCallback | None, then: str = "") -> None:
        """Log ``<what>: N events dropped, not stored: <reason><then>`` once per cause, and
        hand each event to ``on_failure``."""
        for reason, events in self.by_cause.values():
            log.warning("%s: %d events dropped, not stored: %s%s", what, len(events), reason, then)
            message = f"no answer from the server: {reason}{then}."
            errors = [ErrorEntry(None, None, NOT_DELIVERED, message)]
            for event in events:
                call_on_failure(on_failure, event, errors)


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
        #: Why the last try got no answer ("connection refused", "status 503"...), or None
        #: when it was answered: what close() names as the cause of what it drops.
        self.last_failure: tuple[str, str] | None = None
        #: Events dropped while the client was closing: close() reports them with the rest.
        self.closing_drops = Drops()

    def finished(self) -> None:
        self.ended = True
        if self.on_end is not None:
            self.on_end()

    def begin(self, batch: Batch) -> Delivery:
        batch.key = batch.key or new_idempotency_key()
        if not batch.counted:
            batch.counted = True
            self.stats.add(handed_to_network=len(batch.events))
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
        self.last_failure = delivery.last_failure
        self.stats.add(stored=len(delivery.processed), refused=len(delivery.failures))
        report_failures(delivery.failures, batch.events, self.on_failure)
        outcome = delivery.outcome()
        if delivery.undelivered and not self.durable:
            count = len(delivery.undelivered)
            self.stats.add(dropped=count, dropped_undelivered=count)
            drops = Drops()
            dropped = [batch.events[i] for i in delivery.undelivered]
            drops.add(delivery.cause, delivery.reason, dropped)
            if self.source.aborting:
                self.closing_drops.merge(drops)  # close() reports them, with what is left
            else:
                drops.report(f"POST {self.options.endpoint}", self.on_failure)
        # With a spool, an aborted batch stays there (same key) for the next client.
        self.source.settle(batch, outcome)

    def broke(self, batch: Batch) -> None:
        """Delivering ``batch`` raised (logged by the caller): it is given up, or spooled."""
        self.in_flight = None
        outcome = Outcome(unanswered=True)
        if not self.durable:
            count = len(batch.events)
            self.stats.add(dropped=count, dropped_undelivered=count)
            outcome.not_stored = dict.fromkeys(range(count), NOT_DELIVERED)
        self.source.settle(batch, outcome)

    def abandon(self) -> None:
        """Its event loop is gone mid-batch: hand the batch in flight out again."""
        batch, self.in_flight = self.in_flight, None
        if batch is not None:
            self.source.resume(batch)
