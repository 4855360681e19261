"""The thread driver: ``Client``'s sender, a daemon thread per process, and its blocking waits.

Everything it decides is decided elsewhere, without I/O: when a batch is due by the source
(``_queue.py`` / ``_spool.py``), how each request fares by the delivery (``_delivery.py``),
what the outcome means by the sender (``_sender.py``). Here are the loop that posts and the
waits, blocking this thread. ``_task.py`` is the same for asyncio. It never dies of an
exception: each is logged and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from qlevents.client._batch import Batch, Source
from qlevents.client._config import FailureCallback, Options
from qlevents.client._delivery import Delivery, Stats
from qlevents.client._sender import PAUSE_AFTER_ERROR, Sender
from qlevents.client._transport import Transport

log: Final = logging.getLogger("qlevents.client")


def run_delivery(
    delivery: Delivery, transport: Transport, sleep: Callable[[float], bool]
) -> Delivery:
    """Send ``delivery``'s requests until each is settled; ``sleep`` False aborts."""
    while (request := delivery.next()) is not None:
        try:
            answer = transport.post(request.url, request.body, request.headers)
        except Exception as exc:
            delay = delivery.failed(request, exc)
        else:
            delay = delivery.answered(request, answer)
        if delay is not None and not sleep(delay):
            delivery.give_up()
    return delivery


def take(source: Source) -> Batch | None:
    """The next batch once it is due; None when the sender should stop."""
    while True:
        mark = source.ready.mark()
        step = source.poll()
        if not isinstance(step, float):
            return step
        source.ready.wait(mark, step)


def sleep(source: Source, seconds: float) -> bool:
    """Wait between retries; False (at once) when the client aborts."""
    deadline = time.monotonic() + seconds
    while True:
        mark = source.settled.mark()
        left = deadline - time.monotonic()
        if source.aborting:
            return False
        if left <= 0:
            return True
        source.settled.wait(mark, left)


def flush(source: Source, timeout: float) -> tuple[bool, bool, int]:
    """Wait until what is queued now is settled, at most ``timeout`` seconds;
    (finished, all answered, how many of them are pending)."""
    deadline = time.monotonic() + timeout
    flushing = source.begin_flush()
    try:
        while True:
            mark = source.settled.mark()
            finished, delivered, pending = source.flush_state(flushing)
            left = deadline - time.monotonic()
            if finished or left <= 0:
                return finished, delivered, pending
            source.settled.wait(mark, min(left, source.recheck))
    finally:
        source.end_flush()


class Worker(Sender):
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
        super().__init__(source, options, stats, on_failure, durable=durable)
        self.transport = transport
        self._thread = threading.Thread(target=self._run, name="qlevents-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, deadline: float) -> None:
        """Let it send what is queued until ``deadline``, then abort and wait for it to end."""
        self.source.stop()
        self.join(max(0.0, deadline - time.monotonic()))
        if self.is_alive():
            self.source.stop(abort=True)
            # It is at most one request away from noticing.
            self.join(self.options.connect_timeout + self.options.timeout * 4 + 1)

    def _sleep(self, seconds: float) -> bool:
        return sleep(self.source, seconds)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self.orphaned:
                self.transport.close()
            self.finished()

    def _loop(self) -> None:
        while True:
            try:
                batch = take(self.source)
            except Exception:
                log.exception("the sender could not read its queue; trying again in 1 s")
                if not sleep(self.source, PAUSE_AFTER_ERROR):
                    return
                continue
            if batch is None:
                return
            try:
                delivery = self.begin(batch)
                run_delivery(delivery, self.transport, self._sleep)
                self.end(batch, delivery)
            except Exception:
                log.exception("the sender failed on a batch of %d events", len(batch.events))
                self.broke(batch)
                if not sleep(self.source, PAUSE_AFTER_ERROR):
                    return
