"""``Client``: events queued in the caller's thread, sent by a background thread.

``view()`` and ``conversion()`` check the event with the server's own rules, encode it and
put it on a bounded queue (or in the spool): they never wait for the network. One daemon
thread per process sends batches. After ``os.fork()`` the child starts a sender of its own
and never sends what its parent had queued. At interpreter exit, what is queued is sent
within ``shutdown_timeout`` seconds.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from qlevents._exceptions import ClientClosedError, ClientError, TransportError
from qlevents.client import _build
from qlevents.client._batch import EventQueue
from qlevents.client._config import DEFAULT_ENDPOINT, FailureCallback, Options
from qlevents.client._delivery import (
    NOT_DELIVERED,
    Delivery,
    SendResult,
    Stats,
    new_idempotency_key,
)
from qlevents.client._spool import Spool
from qlevents.client._transport import Transport, default_transport
from qlevents.client._worker import Worker, report_failures, run_delivery
from qlevents.events import ErrorEntry

log: Final = logging.getLogger("qlevents.client")


class State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


def check_client_key(client_key: object) -> str:
    if not isinstance(client_key, str) or not client_key.strip():
        raise ClientError(
            "client_key must be your account's client key (a non-empty string); copy it from"
            " Settings > Integration Settings."
        )
    return client_key


_live: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_live):
        client._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _exit_hook(ref: weakref.ref[Client]) -> Callable[[], None]:
    def close_at_exit() -> None:
        client = ref()
        if client is not None:
            client._close_at_exit()

    return close_at_exit


class Client(_build.EventMethods):
    """Sends view and conversion events to the events API without blocking the caller.

    ``Client(client_key, endpoint=...)`` then ``client.view(...)`` / ``client.conversion(...)``.
    See docs/sdk.md for the options.
    """

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
        spool_dir: str | os.PathLike[str] | None = None,
        on_failure: FailureCallback | None = None,
        transport: Transport | None = None,
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
        self.spool_dir = None if spool_dir is None else Path(spool_dir)
        self.on_failure = on_failure
        self._transport = transport or default_transport(endpoint, connect_timeout, timeout)
        self._state = State.OPEN
        self._setup()
        if self._spool is not None and self._spool.pending():
            self._start_worker()  # what an earlier process left in the spool: send it now
        self._exit_hook = _exit_hook(weakref.ref(self))
        atexit.register(self._exit_hook)
        _live.add(self)

    def _setup(self) -> None:
        # Everything that belongs to one process; a forked child calls this again.
        options = self.options
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stats = Stats()
        self._worker: Worker | None = None
        self._queue = EventQueue(
            options.max_queue_size,
            options.max_batch_events,
            options.max_batch_bytes,
            options.flush_interval,
        )
        self._spool: Spool | None = None
        if self.spool_dir is not None:
            self._spool = Spool(
                self.spool_dir,
                options.max_batch_events,
                options.max_batch_bytes,
                options.flush_interval,
            )
        self._dropped_unreported = 0
        self._last_drop_warning = -1e9

    def _after_fork(self) -> None:
        """In a forked child: a fresh queue and sender; the parent's queue is the parent's."""
        if self._pid == os.getpid():
            return
        if self._state is State.CLOSED:
            self._pid = os.getpid()
            return
        if self._spool is not None:
            # The same spool, reopened: its events are sent once, by whoever holds its lock.
            self._spool.abandon()
        self._setup()

    # --- events ------------------------------------------------------------------------------

    def _enqueue(self, group: tuple[_build.Encoded, ...]) -> None:
        if self._state is not State.OPEN:
            raise ClientClosedError("the client is closed; it takes no more events")
        if self._pid != os.getpid():
            self._after_fork()
        if self._worker is None:
            self._start_worker()
        if self._spool is not None:
            self._spool.put(group)
            self._stats.add(enqueued=len(group), spooled=len(group))
        elif not self._queue.put_nowait(group):  # the queue counts what it takes
            self._drop(len(group))

    def _drop(self, count: int) -> None:
        self._stats.add(dropped=count)
        with self._lock:
            self._dropped_unreported += count
            now = time.monotonic()
            if now - self._last_drop_warning < self.options.warn_interval:
                return
            count, self._dropped_unreported = self._dropped_unreported, 0
            self._last_drop_warning = now
        log.warning(
            "dropped %d events: the queue is full (max_queue_size=%d); the server is slow or"
            " unreachable. A spool_dir keeps events on disk instead.",
            count,
            self.options.max_queue_size,
        )

    def _start_worker(self) -> None:
        with self._lock:
            if self._worker is None:
                worker = Worker(
                    self._spool or self._queue,
                    self._transport,
                    self.options,
                    self._stats,
                    self.on_failure,
                    durable=self._spool is not None,
                )
                worker.start()
                self._worker = worker

    # --- sending now ---------------------------------------------------------------------------

    def send(self, events: Iterable[Any], *, idempotency_key: str | None = None) -> SendResult:
        """Send ``events`` now, together in one request, and return the server's answer.

        Retries (same Idempotency-Key) within ``send_retry_budget`` seconds; raises
        TransportError when the server could not be reached, EventValidationError before
        sending anything when an event breaks a rule.
        """
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
        run_delivery(delivery, self._transport, _sleep)
        self._stats.add(
            sent=len(group),
            processed=len(delivery.processed),
            failed=len(delivery.failures),
        )
        if not delivery.answered_any:
            raise TransportError(f"the events were not delivered: {delivery.reason}")
        return delivery.result()

    # --- lifecycle -----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far was answered; False on timeout.

        ``timeout`` defaults to ``shutdown_timeout``: a flush never waits forever.
        """
        if self._pid != os.getpid():
            self._after_fork()
        source = self._spool or self._queue
        if self._worker is None:
            if not source.pending():
                return True
            self._start_worker()
        timeout = self.options.shutdown_timeout if timeout is None else timeout
        delivered, pending = source.flush(timeout)
        if not delivered:
            if pending:
                log.warning("flush: %d events still pending after %.1f s", pending, timeout)
            else:
                log.warning("flush: some events could not be delivered (see above)")
        return delivered

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (within ``timeout``, default ``shutdown_timeout``), then stop."""
        if self._pid != os.getpid():
            self._after_fork()  # before anything else: the parent's queue is not ours to drop
        with self._lock:
            if self._state is State.CLOSED:
                return
            self._state = State.CLOSED
        atexit.unregister(self._exit_hook)
        timeout = self.options.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        source = self._spool or self._queue
        worker = self._worker
        if worker is None and source.pending() and self._spool is None:
            self._start_worker()
            worker = self._worker
        if worker is not None:
            source.stop()
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                source.stop(abort=True)
                # It is at most one request away from noticing.
                worker.join(self.options.connect_timeout + self.options.timeout * 4 + 1)
        left = self._queue.drain()
        if left:
            self._stats.add(dropped=len(left))
            log.warning("close: %d events dropped, not sent within %.1f s", len(left), timeout)
            report_failures(
                [(i, [_closed_error(timeout)]) for i in range(len(left))], left, self.on_failure
            )
        if self._spool is not None:
            pending = self._spool.pending()
            if pending:
                log.warning(
                    "close: %d events stay in the spool %s; the next client on it sends them",
                    pending,
                    self.spool_dir,
                )
            self._spool.close()
        self._transport.close()

    def __del__(self) -> None:
        # Dropped without close(): let the sender drain the queue and end, not linger.
        worker = getattr(self, "_worker", None)
        if worker is not None and self._state is State.OPEN and self._pid == os.getpid():
            worker.orphaned = True
            (self._spool or self._queue).stop()

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception:
            log.exception("closing the qlevents client at exit failed")

    def stats(self) -> dict[str, int]:
        """Counters of this process: enqueued, sent, processed, failed, retried, dropped,
        spooled, requests, and pending (queued, not answered yet)."""
        counts = self._stats.snapshot()
        counts["enqueued"] += self._queue.enqueued
        counts["pending"] = (self._spool or self._queue).pending()
        return counts

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.options.endpoint} {self._state.value}>"


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True


def _closed_error(timeout: float) -> ErrorEntry:
    return ErrorEntry(
        None, None, NOT_DELIVERED, f"the client was closed before it could send it ({timeout} s)."
    )
