"""``Client``: events queued in the caller's thread, sent by a background thread.

``view()`` and ``conversion()`` check the event with the server's own rules, encode it and
put it on a bounded queue (or in the spool): they never wait for the network. One daemon
thread per process sends batches. After ``os.fork()`` the child starts a sender of its own
and never sends what its parent had queued. At interpreter exit, what is queued is sent
within ``shutdown_timeout`` seconds. Everything but the waiting is in ``_base.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from qlevents.client import _worker
from qlevents.client._base import BaseClient
from qlevents.client._delivery import SendResult
from qlevents.client._outcome import FlushResult
from qlevents.client._transport import Transport, default_transport
from qlevents.client._worker import Worker


class Client(BaseClient[Transport, Worker]):
    """Sends view and conversion events to the events API without blocking the caller.

    ``Client(client_key, endpoint=...)`` then ``client.view(...)`` / ``client.conversion(...)``.
    See docs/sdk.md for the options.
    """

    def _default_transport(self) -> Transport:
        options = self.options
        return default_transport(options.endpoint, options.connect_timeout, options.timeout)

    def _can_start_sender(self) -> bool:
        return True

    def _sender_running(self) -> bool:
        return self._sender is not None

    def _new_sender(self) -> Worker:
        worker = self._new_worker(self._transport)
        worker.start()
        return worker

    # --- sending now ---------------------------------------------------------------------------

    def send(self, events: Iterable[Any], *, idempotency_key: str | None = None) -> SendResult:
        """Send ``events`` now, together in one request, and return the server's answer.

        Retries (same Idempotency-Key) within ``send_retry_budget`` seconds; raises
        TransportError when the server could not be reached, EventValidationError before
        sending anything when an event breaks a rule.
        """
        delivery = self._send_delivery(events, idempotency_key)
        if delivery is None:
            return SendResult([], [], [])
        _worker.run_delivery(delivery, self._transport, _sleep)
        return self._send_result(delivery)

    # --- lifecycle -----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Wait until everything queued so far was answered, and say what became of it.

        Returns a :class:`FlushResult`: the events stored, refused (answered, not stored)
        and dropped since the previous flush returned, and those still pending after
        ``timeout`` (default ``shutdown_timeout``: a flush never waits forever). It is true
        only when every one was stored: ``if not client.flush(): ...``.
        """
        timeout = self._timeout(timeout)
        pending = 0
        if self._flush_needed():
            _, _, pending = _worker.flush(self._source, timeout)
        return self._flushed(pending, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (within ``timeout``, default ``shutdown_timeout``), then stop."""
        if not self._begin_close():
            return
        start = self._spool is None  # a spool keeps what this client never began to send
        self._close_blocking(self._timeout(timeout), self._transport, self._sender, start)
        self._transport.close()

    def _close_at_exit(self) -> None:
        self.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True
