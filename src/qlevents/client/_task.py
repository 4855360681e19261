"""The asyncio driver: ``AsyncClient``'s sender, a task on the application's event loop.

The same loop as the thread's (``_worker.py``), awaiting where the thread blocks; every
decision is made by the source, the delivery and the sender, shared with ``Client``. When
its event loop cancels it (``asyncio.run`` returning, the loop shutting down), the batch it
was delivering goes back to the source with its Idempotency-Key, for the next sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from qlevents._exceptions import ClientError
from qlevents.client._batch import Batch, Source
from qlevents.client._config import FailureCallback, Options
from qlevents.client._delivery import Delivery, Stats
from qlevents.client._sender import PAUSE_AFTER_ERROR, Sender
from qlevents.client._transport import AsyncTransport

log: Final = logging.getLogger("qlevents.client")

#: The running sender tasks: an event loop keeps only weak references to its tasks.
_running: set[asyncio.Task[None]] = set()


async def run_delivery(
    delivery: Delivery, transport: AsyncTransport, sleep: Callable[[float], Awaitable[bool]]
) -> Delivery:
    """Send ``delivery``'s requests until each is settled; ``sleep`` False aborts."""
    while (request := delivery.next()) is not None:
        try:
            answer = await transport.post(request.url, request.body, request.headers)
        except Exception as exc:
            delay = delivery.failed(request, exc)
        else:
            delay = delivery.answered(request, answer)
        if delay is not None and not await sleep(delay):
            delivery.give_up()
    return delivery


async def take(source: Source) -> Batch | None:
    """The next batch once it is due; None when the sender should stop."""
    while True:
        mark = source.ready.mark()
        step = source.poll()
        if not isinstance(step, float):
            return step
        await source.ready.wait_async(mark, step)


async def sleep(source: Source, seconds: float) -> bool:
    """Wait between retries; False (at once) when the client aborts."""
    deadline = time.monotonic() + seconds
    while True:
        mark = source.settled.mark()
        left = deadline - time.monotonic()
        if source.aborting:
            return False
        if left <= 0:
            return True
        await source.settled.wait_async(mark, left)


async def flush(source: Source, timeout: float) -> tuple[bool, bool, int]:
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
            await source.settled.wait_async(mark, min(left, source.recheck))
    finally:
        source.end_flush()


def running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise ClientError(
            "AsyncClient queues events from inside a running event loop; use Client in"
            " synchronous code"
        ) from None


class SenderTask(Sender):
    """The sender task of an ``AsyncClient``, on the loop it was started from."""

    def __init__(
        self,
        source: Source,
        transport: AsyncTransport,
        options: Options,
        stats: Stats,
        on_failure: FailureCallback | None,
        *,
        durable: bool,
    ) -> None:
        super().__init__(source, options, stats, on_failure, durable=durable)
        self.transport = transport
        self.task = running_loop().create_task(self._run(), name="qlevents-sender")
        _running.add(self.task)
        self.task.add_done_callback(_running.discard)

    def serves(self, loop: asyncio.AbstractEventLoop | None) -> bool:
        """Still sending, from ``loop``. One whose loop stopped without cancelling it (a
        loop closed outside ``asyncio.run``) is abandoned: its batch goes back."""
        if self.ended:
            return False
        own = self.task.get_loop()
        if own is loop:
            return True
        if not own.is_running():
            self.abandon()
            self.finished()
        return False

    async def stop(self, deadline: float) -> None:
        """Let it send what is queued until ``deadline``, then abort; cancel as a last resort."""
        self.source.stop()
        done, _ = await asyncio.wait([self.task], timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            self.source.stop(abort=True)
            # It is at most one request away from noticing.
            grace = self.options.connect_timeout + self.options.timeout * 4 + 1
            done, _ = await asyncio.wait([self.task], timeout=grace)
        if not done:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _sleep(self, seconds: float) -> bool:
        return await sleep(self.source, seconds)

    async def _run(self) -> None:
        try:
            await self._loop()
            if self.orphaned:
                await self.transport.aclose()
        except asyncio.CancelledError:
            self.abandon()  # its loop is going away: the batch goes back, same key
            raise
        finally:
            self.finished()

    async def _loop(self) -> None:
        while True:
            try:
                batch = await take(self.source)
            except Exception:
                log.exception("the sender could not read its queue; trying again in 1 s")
                if not await sleep(self.source, PAUSE_AFTER_ERROR):
                    return
                continue
            if batch is None:
                return
            try:
                delivery = self.begin(batch)
                await run_delivery(delivery, self.transport, self._sleep)
                self.end(batch, delivery)
            except Exception:
                log.exception("the sender failed on a batch of %d events", len(batch.events))
                self.broke(batch)
                if not await sleep(self.source, PAUSE_AFTER_ERROR):
                    return
