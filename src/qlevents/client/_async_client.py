"""``AsyncClient``: ``Client`` for asyncio applications, sending from a task on their loop.

``view()`` / ``conversion()`` / ``enqueue()`` are plain (non-blocking) methods to call from
inside the event loop; ``send()``, ``flush()`` and ``close()`` are awaited. The options,
the queue, the spool and the delivery are ``Client``'s (``_base.py``); only the waiting
differs.

At interpreter exit, unclosed, it cannot wait on its loop: ``asyncio.run`` has cancelled
its task and closed the loop by then, and a new loop could not even resolve a host name
(its executor refuses work once the interpreter is shutting down). So it does what
``Client`` does, in the exiting thread: what is queued (the batch its task had in flight
included, with its key) is sent through a blocking transport within ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from qlevents.client import _task
from qlevents.client._base import BaseClient
from qlevents.client._delivery import SendResult
from qlevents.client._outcome import FlushResult
from qlevents.client._task import SenderTask
from qlevents.client._transport import (
    AsyncHTTPXTransport,
    AsyncTransport,
    BlockingTransport,
    Transport,
    default_transport,
)


class AsyncClient(BaseClient[AsyncTransport, SenderTask]):
    """Sends view and conversion events from an asyncio task without blocking the caller."""

    def _default_transport(self) -> AsyncTransport:
        return AsyncHTTPXTransport(self.options.connect_timeout, self.options.timeout)

    def _can_start_sender(self) -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False  # made at import time: the sender starts with the first event
        return True

    def _sender_running(self) -> bool:
        sender = self._sender
        if sender is None:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        return sender.serves(loop)

    def _new_sender(self) -> SenderTask:
        return SenderTask(
            self._source,
            self._transport,
            self.options,
            self._stats,
            self.on_failure,
            durable=self._spool is not None,
        )

    # --- sending now ---------------------------------------------------------------------------

    async def send(
        self, events: Iterable[Any], *, idempotency_key: str | None = None
    ) -> SendResult:
        """Send ``events`` now, together in one request, and return the server's answer."""
        delivery = self._send_delivery(events, idempotency_key)
        if delivery is None:
            return SendResult([], [], [])
        await _task.run_delivery(delivery, self._transport, _sleep)
        return self._send_result(delivery)

    # --- lifecycle -----------------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> FlushResult:
        """Wait until everything queued so far was answered, and say what became of it:
        ``Client.flush()``'s :class:`FlushResult`, awaited."""
        timeout = self._timeout(timeout)
        pending = 0
        if self._flush_needed():
            _, _, pending = await _task.flush(self._source, timeout)
        return self._flushed(pending, timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Send what is queued (within ``timeout``, default ``shutdown_timeout``), then stop."""
        if not self._begin_close():
            return
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        if not self._sender_running() and self._spool is None and self._queue.pending():
            self._sender = self._new_sender()
        sender = self._sender
        if sender is not None and not sender.ended:
            await sender.stop(deadline)
        self._finish_close(timeout, sender)
        await self._transport.aclose()

    def _close_at_exit(self) -> None:
        # The event loop is gone, or not ours to wait on: a blocking close, as Client's.
        if not self._begin_close():
            return
        sender = self._sender
        if sender is not None:
            sender.serves(None)  # a task its loop dropped: its batch goes back, key and all
        transport = self._blocking_transport()
        try:
            self._close_blocking(self._timeout(None), transport, None, start=sender is not None)
        finally:
            transport.close()

    def _blocking_transport(self) -> Transport:
        if type(self._transport) is AsyncHTTPXTransport:
            options = self.options
            return default_transport(options.endpoint, options.connect_timeout, options.timeout)
        return BlockingTransport(self._transport)

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
