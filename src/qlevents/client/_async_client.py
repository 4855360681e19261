"""``AsyncClient``: the same as ``Client`` for asyncio applications, sending from a task.

``view()`` / ``conversion()`` / ``enqueue()`` are plain (non-blocking) methods to call from
inside the event loop; ``send()``, ``flush()`` and ``close()`` are awaited. Close it in your
application's shutdown (lifespan): an event loop is gone by interpreter exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final

from qlevents._exceptions import ClientClosedError, ClientError, TransportError
from qlevents.client import _build
from qlevents.client._batch import QueuedGroup, take_groups
from qlevents.client._client import State, check_client_key
from qlevents.client._config import DEFAULT_ENDPOINT, FailureCallback, Options
from qlevents.client._delivery import Delivery, SendResult, Stats, new_idempotency_key
from qlevents.client._transport import Answer, AsyncHTTPXTransport, AsyncTransport
from qlevents.client._worker import report_failures

log: Final = logging.getLogger("qlevents.client")


class _Signal:
    """Wakes every coroutine waiting at the moment it fires (a pulse, not a latch)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


class AsyncClient(_build.EventMethods):
    """Sends view and conversion events from an asyncio task without blocking the caller."""

    def __init__(
        self,
        client_key: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = Options.timeout,
        connect_timeout: float = Options.connect_timeout,
        max_queue_size: int = Options.max_queue_size,
        max_batch_events: int = Options.max_batch_events,
        max_batch_bytes: int = Options.max_batch_bytes,
        flush_interval: float = Options.flush_interval,
        retry_budget: float = Options.retry_budget,
        send_retry_budget: float = Options.send_retry_budget,
        backoff_base: float = Options.backoff_base,
        backoff_cap: float = Options.backoff_cap,
        retry_after_cap: float = Options.retry_after_cap,
        gzip_min_bytes: int | None = Options.gzip_min_bytes,
        shutdown_timeout: float = Options.shutdown_timeout,
        warn_interval: float = Options.warn_interval,
        on_failure: FailureCallback | None = None,
        transport: AsyncTransport | None = None,
    ) -> None:
        self.client_key = check_client_key(client_key)
        self.options = Options(
            endpoint=endpoint,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_queue_size=max_queue_size,
            max_batch_events=max_batch_events,
            max_batch_bytes=max_batch_bytes,
            flush_interval=flush_interval,
            retry_budget=retry_budget,
            send_retry_budget=send_retry_budget,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            gzip_min_bytes=gzip_min_bytes,
            shutdown_timeout=shutdown_timeout,
            warn_interval=warn_interval,
        )
        self.options.check()
        self.on_failure = on_failure
        self._transport = transport or AsyncHTTPXTransport(connect_timeout, timeout)
        self._state = State.OPEN
        self._stats = Stats()
        self._groups: deque[QueuedGroup] = deque()
        self._size = self._bytes = self._seq = self._done_seq = self._lost = self._urgent = 0
        self._oldest = 0.0
        self._stopping = self._aborting = False
        self._wake = _Signal()
        self._settled = _Signal()
        self._task: asyncio.Task[None] | None = None
        self._dropped_unreported = 0
        self._last_drop_warning = -1e9

    # --- events ------------------------------------------------------------------------------

    def _enqueue(self, group: tuple[_build.Encoded, ...]) -> None:
        if self._state is not State.OPEN:
            raise ClientClosedError("the client is closed; it takes no more events")
        count = len(group)
        if self._size + count > self.options.max_queue_size:
            self._drop(count)
            return
        if self._task is None:
            self._start()
        if not self._size:
            self._oldest = time.monotonic()
        size = sum(map(len, group))
        self._size += count
        self._bytes += size
        self._seq += count
        self._groups.append((group, size, self._seq))
        self._stats.add(enqueued=count)
        if (
            self._size == count
            or self._size >= self.options.max_batch_events
            or self._bytes >= self.options.max_batch_bytes
        ):
            self._wake.fire()

    def _drop(self, count: int) -> None:
        self._stats.add(dropped=count)
        self._dropped_unreported += count
        now = time.monotonic()
        if now - self._last_drop_warning >= self.options.warn_interval:
            log.warning(
                "dropped %d events: the queue is full (max_queue_size=%d); the server is slow"
                " or unreachable.",
                self._dropped_unreported,
                self.options.max_queue_size,
            )
            self._dropped_unreported = 0
            self._last_drop_warning = now

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ClientError(
                "AsyncClient queues events from inside a running event loop; use Client in"
                " synchronous code"
            ) from None
        self._task = loop.create_task(self._run(), name="qlevents-sender")

    # --- the sender task ---------------------------------------------------------------------

    async def _run(self) -> None:
        options = self.options
        while True:
            while not self._groups:
                if self._stopping or self._aborting:
                    return
                await self._wake.wait(None)
            due = self._oldest + options.flush_interval - time.monotonic()
            if not (
                due <= 0
                or self._urgent
                or self._stopping
                or self._size >= options.max_batch_events
                or self._bytes >= options.max_batch_bytes
            ):
                await self._wake.wait(due)
                continue
            if self._aborting:
                return
            events, groups, last = self._take()
            try:
                await self._deliver(events, groups, last)
            except Exception:
                log.exception("the sender failed on a batch of %d events", len(events))
                self._stats.add(dropped=len(events))
                self._settle(last, len(events))

    def _take(self) -> tuple[list[_build.Encoded], list[int], int]:
        events, groups, payload, last = take_groups(
            self._groups, self.options.max_batch_events, self.options.max_batch_bytes
        )
        self._bytes -= payload
        self._size -= len(events)
        if self._groups:
            self._oldest = time.monotonic()
        return events, groups, last

    async def _deliver(self, events: list[_build.Encoded], groups: list[int], last: int) -> None:
        delivery = Delivery(
            events,
            groups,
            key=new_idempotency_key(),
            endpoint=self.options.endpoint,
            options=self.options,
            budget=self.options.retry_budget,
            stats=self._stats,
            keep_processed=False,
        )
        self._stats.add(sent=len(events))
        await self._run_delivery(delivery, self._sleep)
        self._stats.add(
            processed=len(delivery.processed),
            failed=len(delivery.failures),
            dropped=len(delivery.undelivered),
        )
        report_failures(delivery.failures, events, self.on_failure)
        if delivery.undelivered:
            log.warning("%d events dropped: %s", len(delivery.undelivered), delivery.reason)
            report_failures(delivery.not_delivered(), events, self.on_failure)
        self._settle(last, len(delivery.undelivered))

    def _settle(self, last: int, lost: int) -> None:
        self._done_seq = max(self._done_seq, last)
        self._lost += lost
        self._settled.fire()

    async def _sleep(self, seconds: float) -> bool:
        if not self._aborting and seconds > 0:
            await self._settled.wait(seconds)  # close() fires it to cut the wait short
        return not self._aborting

    async def _run_delivery(self, delivery: Delivery, sleep: Any) -> None:
        while (request := delivery.next()) is not None:
            started = time.perf_counter()
            try:
                answer: Answer = await self._transport.post(
                    request.url, request.body, request.headers
                )
            except TransportError as exc:
                delay = delivery.failed(request, exc, time.perf_counter() - started)
            except Exception as exc:
                log.exception("the transport %r raised", self._transport)
                error = TransportError(f"{type(exc).__name__}: {exc}")
                delay = delivery.failed(request, error, time.perf_counter() - started)
            else:
                delay = delivery.answered(request, answer, time.perf_counter() - started)
            if delay is not None and not await sleep(delay):
                delivery.give_up("the client was closed before the server answered")

    # --- sending now ---------------------------------------------------------------------------

    async def send(
        self, events: Iterable[Any], *, idempotency_key: str | None = None
    ) -> SendResult:
        """Send ``events`` now, together in one request, and return the server's answer."""
        if self._state is not State.OPEN:
            raise ClientClosedError("the client is closed")
        group = _build.group(events, self.client_key)
        if not group:
            return SendResult([], [], [])
        delivery = Delivery(
            group,
            [len(group)],
            key=idempotency_key or new_idempotency_key(),
            endpoint=self.options.endpoint,
            options=self.options,
            budget=self.options.send_retry_budget,
            stats=self._stats,
        )
        await self._run_delivery(delivery, _sleep)
        self._stats.add(
            sent=len(group),
            processed=len(delivery.processed),
            failed=len(delivery.failures),
        )
        if not delivery.answered_any:
            raise TransportError(f"the events were not delivered: {delivery.reason}")
        return delivery.result()

    # --- lifecycle -----------------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far was answered; False on timeout."""
        timeout = self.options.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        target, lost = self._seq, self._lost
        self._urgent += 1
        try:
            self._wake.fire()
            while self._done_seq < target and self._task is not None and not self._task.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await self._settled.wait(left)
        finally:
            self._urgent -= 1
        pending = max(0, target - self._done_seq)
        if pending:
            log.warning("flush: %d events still pending after %.1f s", pending, timeout)
        return not pending and self._lost == lost

    async def close(self, timeout: float | None = None) -> None:
        """Send what is queued (within ``timeout``, default ``shutdown_timeout``), then stop."""
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        timeout = self.options.shutdown_timeout if timeout is None else timeout
        task = self._task
        if task is not None:
            self._stopping = True
            self._wake.fire()
            done, _ = await asyncio.wait([task], timeout=timeout)
            if not done:
                self._aborting = True
                self._wake.fire()
                self._settled.fire()
                done, _ = await asyncio.wait(
                    [task], timeout=self.options.connect_timeout + self.options.timeout * 4 + 1
                )
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        left = [event for group, _, _ in self._groups for event in group]
        self._groups.clear()
        if left:
            self._stats.add(dropped=len(left))
            log.warning("close: %d events dropped, not sent within %.1f s", len(left), timeout)
        await self._transport.aclose()

    def stats(self) -> dict[str, int]:
        """The same counters as ``Client.stats()``."""
        counts = self._stats.snapshot()
        counts["pending"] = (
            self._seq
            - self._done_seq
            - (sum(len(g) for g, _, _ in self._groups) if self._state is State.CLOSED else 0)
        )
        return counts

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _sleep(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return True
