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
import math
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
    FailureCallback,
    Options,
    SpoolOptions,
    check_client_key,
    resolve_endpoint,
)
from qlevents.client._delivery import Delivery, SendResult, Stats, new_idempotency_key
from qlevents.client._outcome import QUEUE_FULL, SPOOL_FULL, FlushResult
from qlevents.client._queue import EventQueue
from qlevents.client._sender import Drops, Sender
from qlevents.client._spool import Spool
from qlevents.client._transport import AsyncTransport, Transport
from qlevents.client._worker import Worker

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
        endpoint: str | None = None,
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
        spool_max_bytes: int | None = SpoolOptions.max_bytes,
        spool_max_events: int | None = SpoolOptions.max_events,
        on_failure: FailureCallback | None = None,
        transport: TransportT | None = None,
    ) -> None:
        self.client_key = check_client_key(client_key)
        self.options = Options(
            endpoint=resolve_endpoint(endpoint),
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
        self.spool_options = SpoolOptions(spool_max_bytes, spool_max_events)
        self.spool_options.check()
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
                cap_events=self.spool_options.max_events,
                cap_bytes=self.spool_options.max_bytes,
            )
        self._source: Source = self._spool or self._queue
        #: Events dropped on the way in, by cause, not logged yet; when each cause was last.
        self._dropped_unreported: dict[str, int] = {}
        self._last_drop_warning: dict[str, float] = {}
        #: The outcomes tallied when the last flush() returned: the next reports from there.
        self._flushed_outcomes: dict[str, int] = {}

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
            if self._spool.put(group):
                self._stats.add(enqueued=len(group), spooled=len(group))
            else:
                self._drop(len(group), SPOOL_FULL)
        elif not self._queue.put_nowait(group):  # the queue counts what it takes
            self._drop(len(group), QUEUE_FULL)

    def _start_sender(self) -> None:
        with self._lock:
            if not self._sender_running():
                self._sender = self._new_sender()

    def _drop(self, count: int, cause: str) -> None:
        """Events refused on the way in (a full queue or spool): counted, and logged once,
        then at most once per ``warn_interval``, with how many since."""
        self._stats.add(dropped=count, **{f"dropped_{cause}": count})
        with self._lock:
            count += self._dropped_unreported.pop(cause, 0)
            now = time.monotonic()
            if now - self._last_drop_warning.get(cause, -math.inf) < self.options.warn_interval:
                self._dropped_unreported[cause] = count
                return
            self._last_drop_warning[cause] = now
        if cause == SPOOL_FULL:
            assert self._spool is not None
            events, nbytes = self._spool.size()
            log.warning(
                "dropped %d new events: the spool %s is full (%d events, %d bytes;"
                " spool_max_events=%s, spool_max_bytes=%s); the server has been unreachable"
                " or refusing for a while. The events in it are kept and sent first.",
                count,
                self.spool_dir,
                events,
                nbytes,
                self.spool_options.max_events,
                self.spool_options.max_bytes,
            )
        else:
            log.warning(
                "dropped %d events: the queue is full (max_queue_size=%d); the server is slow"
                " or unreachable. A spool_dir keeps events on disk instead.",
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
            handed_to_network=len(delivery.events),
            stored=len(delivery.processed),
            refused=len(delivery.failures),
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

    def _flushed(self, pending: int, timeout: float) -> FlushResult:
        """What became of the events since the previous flush returned."""
        with self._lock:
            outcomes = self._source.outcomes()
            result = FlushResult.between(self._flushed_outcomes, outcomes, pending)
            self._flushed_outcomes = outcomes
        if pending:
            log.warning("flush: %d events still pending after %.1f s", pending, timeout)
        if not result:
            log.warning("flush: not everything was stored: %s", result.describe())
        return result

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
        self._finish_close(timeout, worker)

    def _finish_close(self, timeout: float, *senders: Sender | None) -> None:
        """Account for what was not sent: one WARNING line per cause, however many events."""
        drops = Drops()
        last_failure = None
        for sender in senders:
            if sender is not None:
                drops.merge(sender.closing_drops)
                last_failure = last_failure or sender.last_failure
        left = self._queue.drain()
        if left:
            self._stats.add(dropped=len(left), dropped_undelivered=len(left))
            # Not sent at all: for the reason the last try failed, if it did (an outage);
            # else the server answered, only not fast enough for all of them.
            cause, what = last_failure or ("not sent in time", "not sent in time")
            drops.add(cause, what, left)
        drops.report("close", self.on_failure, f"; shutdown_timeout ({timeout} s) ran out")
        with self._lock:
            unreported, self._dropped_unreported = self._dropped_unreported, {}
        for cause, count in unreported.items():
            full = "the spool" if cause == SPOOL_FULL else "the queue"
            log.warning(
                "close: %d more events were dropped since the last warning: %s was full",
                count,
                full,
            )
        if self._spool is not None:
            pending = self._spool.pending()
            if pending:
                why = f" (the last try: {last_failure[1]})" if last_failure else ""
                log.warning(
                    "close: %d events stay in the spool %s%s; the next client on it sends them",
                    pending,
                    self.spool_dir,
                    why,
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
        """Counters of this process (docs/sdk.md, *Counters*). Events: ``enqueued``,
        ``spooled``, ``handed_to_network``, ``stored``, ``refused``, ``dropped`` (and by
        cause: ``dropped_queue_full``, ``dropped_spool_full``, ``dropped_undelivered``),
        ``pending`` (queued, not answered yet). Tries: ``requests`` (answered by the
        server), ``network_errors`` (no answer: refused, DNS, timeout), ``retried``."""
        counts = self._stats.snapshot()
        counts["enqueued"] += self._queue.enqueued
        counts["pending"] = self._source.pending()
        return counts

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.options.endpoint} {self._state.value}>"
