"""``BaseClient``: everything ``Client`` and ``AsyncClient`` share, but how they wait.

The options and their checks, the lifecycle (open, closed, after a fork, at interpreter
exit), the queue or the spool events go to, the counters, and the bookkeeping around
``send()``, ``flush()`` and ``close()``. A subclass says how it waits: ``Client`` blocks a
thread and sends from a daemon thread (``_worker.py``); ``AsyncClient`` awaits and sends
from a task (``_task.py``). The way httpx's ``BaseClient`` serves its two clients.
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
from typing import Any, Final, Generic, TypeVar

from qlevents._exceptions import ClientClosedError, TransportError
from qlevents.client import _build
from qlevents.client._batch import Source
from qlevents.client._config import (
    DEFAULT_ENDPOINT,
    FailureCallback,
    Options,
    check_client_key,
)
from qlevents.client._delivery import (
    NOT_DELIVERED,
    Delivery,
    SendResult,
    Stats,
    new_idempotency_key,
)
from qlevents.client._queue import EventQueue
from qlevents.client._sender import Sender, report_failures
from qlevents.client._spool import Spool
from qlevents.client._transport import AsyncTransport, Transport
from qlevents.client._worker import Worker
from qlevents.events import ErrorEntry

log: Final = logging.getLogger("qlevents.client")

TransportT = TypeVar("TransportT", Transport, AsyncTransport)
SenderT = TypeVar("SenderT", bound=Sender)


class State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


_live: weakref.WeakSet[BaseClient[Any, Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_live):
        client._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit(client: BaseClient[Any, Any]) -> None:
    try:
        client._close_at_exit()
    except Exception:
        log.exception("closing the qlevents client at exit failed")


def _exit_hook(ref: weakref.ref[BaseClient[Any, Any]]) -> Callable[[], None]:
    def close_at_exit() -> None:
        client = ref()
        if client is not None:
            _close_at_exit(client)

    return close_at_exit


#: Clients dropped unclosed while their sender had work left: kept until it is done, so that
#: interpreter exit can still deliver what they queued (see ``BaseClient.__del__``).
_orphans: set[BaseClient[Any, Any]] = set()


@atexit.register
def _close_orphans() -> None:
    for client in list(_orphans):
        _close_at_exit(client)


class BaseClient(_build.EventMethods, Generic[TransportT, SenderT]):
    """The options, state and queue of a client; see ``Client`` and ``AsyncClient``."""

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
        transport: TransportT | None = None,
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
        self._transport: TransportT = (
            transport if transport is not None else self._default_transport()
        )
        self._state = State.OPEN
        self._setup()
        if self._spool is not None and self._spool.pending() and self._can_start_sender():
            self._start_sender()  # what an earlier process left in the spool: send it now
        self._exit_hook = _exit_hook(weakref.ref(self))
        atexit.register(self._exit_hook)
        _live.add(self)

    # --- how a subclass waits ----------------------------------------------------------------

    def _default_transport(self) -> TransportT:
        raise NotImplementedError

    def _can_start_sender(self) -> bool:
        """Whether a sender can start now (a task needs a running event loop)."""
        raise NotImplementedError

    def _sender_running(self) -> bool:
        """Whether this process has a sender that takes from the source now."""
        raise NotImplementedError

    def _new_sender(self) -> SenderT:
        """A sender on the source, started."""
        raise NotImplementedError

    def _close_at_exit(self) -> None:
        raise NotImplementedError

    # --- per process ---------------------------------------------------------------------------

    def _setup(self) -> None:
        # Everything that belongs to one process; a forked child calls this again.
        options = self.options
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stats = Stats()
        self._sender: SenderT | None = None
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
        self._source: Source = self._spool or self._queue
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

    def _new_worker(self, transport: Transport) -> Worker:
        """A sender thread on the source (not started)."""
        return Worker(
            self._source,
            transport,
            self.options,
            self._stats,
            self.on_failure,
            durable=self._spool is not None,
        )

    # --- events --------------------------------------------------------------------------------

    def _enqueue(self, group: tuple[_build.Encoded, ...]) -> None:
        if self._state is not State.OPEN:
            raise ClientClosedError("the client is closed; it takes no more events")
        if self._pid != os.getpid():
            self._after_fork()
        if not self._sender_running():
            self._start_sender()
        if self._spool is not None:
            self._spool.put(group)
            self._stats.add(enqueued=len(group), spooled=len(group))
        elif not self._queue.put_nowait(group):  # the queue counts what it takes
            self._drop(len(group))

    def _start_sender(self) -> None:
        with self._lock:
            if not self._sender_running():
                self._sender = self._new_sender()

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

    # --- send(): around the request ------------------------------------------------------------

    def _send_delivery(self, events: Iterable[Any], idempotency_key: str | None) -> Delivery | None:
        """The delivery of ``events`` in one request; None when there are none."""
        if self._state is not State.OPEN:
            raise ClientClosedError("the client is closed")
        group = _build.group(events, self.client_key)
        if not group:
            return None
        return Delivery(
            group,
            [len(group)],
            key=idempotency_key or new_idempotency_key(),
            endpoint=self.options.endpoint,
            options=self.options,
            budget=self.options.send_retry_budget,
            stats=self._stats,
        )

    def _send_result(self, delivery: Delivery) -> SendResult:
        self._stats.add(
            sent=len(delivery.events),
            processed=len(delivery.processed),
            failed=len(delivery.failures),
        )
        if not delivery.answered_any:
            raise TransportError(f"the events were not delivered: {delivery.reason}")
        return delivery.result()

    # --- flush() and close(): around the wait --------------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        return self.options.shutdown_timeout if timeout is None else timeout

    def _flush_needed(self) -> bool:
        """Whether flush() has anything to wait for (it starts the sender if need be)."""
        if self._pid != os.getpid():
            self._after_fork()
        if not self._sender_running():
            if not self._source.pending():
                return False
            self._start_sender()
        return True

    def _flushed(self, delivered: bool, pending: int, timeout: float) -> bool:
        if not delivered:
            if pending:
                log.warning("flush: %d events still pending after %.1f s", pending, timeout)
            else:
                log.warning("flush: some events could not be delivered (see above)")
        return delivered

    def _begin_close(self) -> bool:
        """Mark the client closed; False when it was already."""
        if self._pid != os.getpid():
            self._after_fork()  # before anything else: the parent's queue is not ours to drop
        with self._lock:
            if self._state is State.CLOSED:
                return False
            self._state = State.CLOSED
        atexit.unregister(self._exit_hook)
        return True

    def _close_blocking(
        self, timeout: float, transport: Transport, worker: Worker | None, start: bool
    ) -> None:
        """Send what is queued from ``worker`` (or a new one, if ``start``) within ``timeout``,
        then account for what is left: how ``Client`` closes, and ``AsyncClient`` at exit."""
        deadline = time.monotonic() + timeout
        if worker is None and start and self._source.pending():
            worker = self._new_worker(transport)
            worker.start()
        if worker is not None:
            worker.stop(deadline)
        self._finish_close(timeout)

    def _finish_close(self, timeout: float) -> None:
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

    def __del__(self) -> None:
        # Dropped without close(): let the sender drain the queue and end, not linger. Until
        # it has, the client is kept (resurrected) for the exit hook, should the process end
        # first (or, for a task, its event loop).
        sender = getattr(self, "_sender", None)
        if sender is None or sender.ended or self._state is not State.OPEN:
            return
        if self._pid != os.getpid():
            return
        _orphans.add(self)
        sender.orphaned = True
        sender.on_end = self._release
        self._source.stop()

    def _release(self) -> None:
        if not self._source.pending():
            _orphans.discard(self)

    # --- counters ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters of this process: enqueued, sent, processed, failed, retried, dropped,
        spooled, requests, and pending (queued, not answered yet)."""
        counts = self._stats.snapshot()
        counts["enqueued"] += self._queue.enqueued
        counts["pending"] = self._source.pending()
        return counts

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.options.endpoint} {self._state.value}>"


def _closed_error(timeout: float) -> ErrorEntry:
    return ErrorEntry(
        None, None, NOT_DELIVERED, f"the client was closed before it could send it ({timeout} s)."
    )
