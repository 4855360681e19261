"""Delivering one batch: the decisions, without the I/O (shared by the thread and the task).

A :class:`Delivery` hands out requests (``next()``) and is told what became of each one
(``answered()`` / ``failed()``); it answers with how long to wait before trying again, or
None when the request is settled. It retries network errors, timeouts, 429 and 5xx with
exponential backoff and full jitter, honouring Retry-After, within a total budget; it sends
the same Idempotency-Key on every retry of a request, so the server stores a batch once.
The loops that do the I/O are a few lines each: ``run_delivery`` in ``_worker.py`` (a
thread) and in ``_task.py`` (asyncio).

A try the server answered is a request (``stats()["requests"]``); a try that got no answer
(refused connection, DNS, timeout) is a network error, named by its cause
(``_transport.cause_of``), never a request.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from qlevents._exceptions import TransportError
from qlevents.client._build import Encoded, as_dict, body
from qlevents.client._config import Options
from qlevents.client._outcome import NOT_DELIVERED, Outcome
from qlevents.client._transport import Answer, cause_of
from qlevents.events import ErrorEntry, EventsResponse, StoredEvent

log: Final = logging.getLogger("qlevents.client")

_decode_answer: Final = msgspec.json.Decoder(EventsResponse).decode


class _Counted(msgspec.Struct):
    """An answer read for its counts and errors only: the background sender needs no more."""

    processed: list[msgspec.Raw] = []
    failed: list[msgspec.Raw] = []
    errors: list[ErrorEntry] = []


_decode_counts: Final = msgspec.json.Decoder(_Counted).decode
RETRY_STATUSES: Final = frozenset({408, 425, 429})
WRONG_ENDPOINT: Final = "wrong_endpoint"
#: Why the events of a delivery given up at close got no answer, when no try had failed.
CLOSED_REASON: Final = "the client was closed before the server answered"


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key: 128 random bits."""
    return "qle-" + os.urandom(16).hex()


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


#: The counters of ``stats()`` (and ``pending``, read from the source). Events: taken by
#: view()/conversion()/enqueue() (``enqueued``), of those written to the spool (``spooled``),
#: put in a request at least once (``handed_to_network``), stored, refused, dropped (by cause:
#: a full queue or spool, or no answer in the retry budget or before close). Tries: answered
#: by the server (``requests``), unanswered (``network_errors``), retried (``retried``).
STAT_NAMES: Final = (
    "enqueued", "spooled", "handed_to_network", "stored", "refused", "dropped",
    "dropped_queue_full", "dropped_spool_full", "dropped_undelivered",
    "requests", "network_errors", "retried",
)  # fmt: skip


class Stats:
    """Counters, safe to bump from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(STAT_NAMES, 0)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                self._counts[name] += value

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@dataclass(slots=True)
class Request:
    """One POST of some of the delivery's events (all of them, unless split or redirected)."""

    url: str
    key: str
    events: list[Encoded]
    #: Where each event is in the delivery's input.
    origins: list[int]
    #: The sizes of the groups in ``events``, in order (groups are never split).
    groups: list[int]
    gzip_min_bytes: int | None
    redirected: bool = False
    tries: int = 0
    #: When the current try was handed out (perf_counter), for the log's timings.
    started: float = 0.0
    plain: bytes = b""
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.plain = body(self.events)
        self.encode(self.gzip_min_bytes)

    def encode(self, gzip_min_bytes: int | None) -> None:
        self.headers = {"content-type": "application/json", "idempotency-key": self.key}
        if gzip_min_bytes is not None and len(self.plain) >= gzip_min_bytes:
            packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            self.body = packer.compress(self.plain) + packer.flush()
            self.headers["content-encoding"] = "gzip"
        else:
            self.body = self.plain


@dataclass(frozen=True, slots=True)
class SendResult:
    """The server's answer to ``send()``: the spec's three lists, indexes as given."""

    processed: list[StoredEvent]
    #: The refused events, as dicts, in the order they were given.
    failed: list[dict[str, Any]]
    #: Why: each entry's ``index`` is the event's position in the events given to send().
    errors: list[ErrorEntry]

    @property
    def ok(self) -> bool:
        """Every event was processed."""
        return not self.failed and not self.errors


class Delivery:
    """The fate of one batch: which events were processed, refused, or not delivered."""

    def __init__(
        self,
        events: Sequence[Encoded],
        groups: Sequence[int],
        *,
        key: str,
        endpoint: str,
        options: Options,
        budget: float,
        stats: Stats | None = None,
        keep_processed: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats or Stats()
        # send() returns the stored events; the background sender only counts them.
        self._decode = _decode_answer if keep_processed else _decode_counts
        self.options = options
        self.events = list(events)
        self.processed: list[Any] = []
        #: (index in the input, the errors about it) for every event the server refused.
        self.failures: list[tuple[int, list[ErrorEntry]]] = []
        #: Indexes of the events no answer was had for; why in a few words (``cause``, e.g.
        #: "connection refused") and in full (``reason``).
        self.undelivered: list[int] = []
        self.cause = ""
        self.reason = ""
        self.answered_any = False
        #: The last try's failure (cause, description) while it is being retried, else None.
        self.last_failure: tuple[str, str] | None = None
        #: When each cause of a failed try was last logged at WARNING (repeats go to INFO).
        self._warned: dict[str, float] = {}
        self._clock = clock
        self._deadline = clock() + budget
        self._queue: deque[Request] = deque(
            [
                Request(
                    endpoint,
                    key,
                    list(events),
                    list(range(len(events))),
                    list(groups),
                    options.gzip_min_bytes,
                )
            ]
        )

    # --- the protocol with the I/O loop ----------------------------------------------------

    def next(self) -> Request | None:
        """The request to send now (the same one again on a retry), or None when done."""
        if not self._queue:
            return None
        request = self._queue[0]
        request.started = time.perf_counter()
        return request

    def answered(self, request: Request, answer: Answer) -> float | None:
        """The server answered ``request``; returns seconds to wait before a retry, or None."""
        seconds = time.perf_counter() - request.started
        self.stats.add(requests=1)
        request.tries += 1
        self.last_failure = None
        status = answer.status
        parsed: EventsResponse | _Counted | None = None
        try:
            parsed = self._decode(answer.body)
        except msgspec.DecodeError:
            parsed = None
        if status == 200 and parsed is not None:
            self._log_call(request, status, seconds, parsed, answer)
            self.answered_any = True
            self._settle_200(request, parsed)
            return None
        errors = list(parsed.errors) if parsed is not None else []
        detail = (
            "; ".join(f"{e.code}: {e.message}" for e in errors)
            if errors
            else answer.body[:200].decode("utf-8", "replace")
        )
        if status == 200 or status in RETRY_STATUSES or 500 <= status <= 599:
            wait = retry_after(answer.headers.get("retry-after"))
            return self._retry(request, f"status {status}", f"({detail})", seconds, wait)
        if status == 404:
            detail += f"; is {request.url} the /events URL of your qlevents server?"
        self._log_failure(request, f"status {status}", f"({detail})", seconds, None)
        self.answered_any = True
        if status == 413 and len(request.groups) > 1:
            self._split(request)
            return None
        if status == 415 and "content-encoding" in request.headers:
            request.encode(None)  # a server that takes no gzip: send it plain
            return 0.0
        # The whole request was refused for good: every event in it failed with these errors.
        if not errors:
            errors = [ErrorEntry(None, None, f"http_{status}", f"the server answered {status}.")]
        self._queue.popleft()
        self.failures.extend((origin, errors) for origin in request.origins)
        return None

    def failed(self, request: Request, error: Exception) -> float | None:
        """No answer to ``request`` (the transport raised ``error``); returns seconds to wait
        before a retry, or None. Anything but a TransportError is a broken transport: logged
        with its traceback, and retried like a network error (it must not kill the sender)."""
        seconds = time.perf_counter() - request.started
        if not isinstance(error, TransportError):
            log.error("the transport raised %s", type(error).__name__, exc_info=error)
            error = TransportError(f"{type(error).__name__}: {error}")
        self.stats.add(network_errors=1)
        request.tries += 1
        return self._retry(request, cause_of(error), f"({error})", seconds, None)

    def give_up(self) -> None:
        """The client closes: whatever was not answered yet is not delivered, for the
        reason the last try failed (the client only gives up between tries)."""
        cause, what = self.last_failure or (CLOSED_REASON, CLOSED_REASON)
        while self._queue:
            self._abandon(self._queue.popleft(), cause, what)

    def outcome(self) -> Outcome:
        """The batch's outcome: each event not stored by the code of its first error."""
        not_stored = {index: errors[0].code for index, errors in self.failures}
        not_stored.update(dict.fromkeys(self.undelivered, NOT_DELIVERED))
        return Outcome(len(self.processed), not_stored, unanswered=bool(self.undelivered))

    def not_delivered(self) -> list[tuple[int, list[ErrorEntry]]]:
        """The undelivered events, as failures with the client-side code ``not_delivered``."""
        message = f"no answer from the server: {self.reason}."
        return [(i, [ErrorEntry(i, None, NOT_DELIVERED, message)]) for i in self.undelivered]

    def result(self) -> SendResult:
        """The outcome as ``send()`` returns it."""
        failures = sorted(self.failures + self.not_delivered(), key=lambda f: f[0])
        errors = [e for _, entries in failures for e in entries if e.index is not None]
        for _, entries in failures:  # an error about a whole request, once
            errors.extend(e for e in entries if e.index is None and e not in errors)
        return SendResult(
            list(self.processed), [as_dict(self.events[i]) for i, _ in failures], errors
        )

    # --- decisions --------------------------------------------------------------------------

    def _retry(
        self, request: Request, cause: str, detail: str, seconds: float, wait: float | None
    ) -> float | None:
        options = self.options
        what = f"{cause} {detail}"
        self.last_failure = (cause, what)
        backoff = random.uniform(
            0, min(options.backoff_cap, options.backoff_base * 2**request.tries)
        )
        delay = backoff if wait is None else max(backoff, min(wait, options.retry_after_cap))
        if self._clock() + delay > self._deadline:
            self._log_failure(request, cause, detail, seconds, None)
            self._queue.popleft()
            self._abandon(request, cause, f"{what}; gave up after {request.tries} tries")
            return None
        self._log_failure(request, cause, detail, seconds, delay)
        self.stats.add(retried=1)
        return delay

    def _abandon(self, request: Request, cause: str, reason: str) -> None:
        self.undelivered.extend(request.origins)
        self.cause = cause
        self.reason = reason

    def _split(self, request: Request) -> None:
        # The server's limits are lower than ours: send the groups in two halves, new keys.
        self._queue.popleft()
        half = len(request.groups) // 2
        cut = sum(request.groups[:half])
        halves = [
            Request(
                request.url,
                f"{request.key[:250]}-{suffix}",
                request.events[part],
                request.origins[part],
                groups,
                self.options.gzip_min_bytes,
                request.redirected,
            )
            for suffix, part, groups in (
                ("a", slice(None, cut), request.groups[:half]),
                ("b", slice(cut, None), request.groups[half:]),
            )
        ]
        self._queue.extendleft(reversed(halves))

    def _settle_200(self, request: Request, answer: EventsResponse | _Counted) -> None:
        self._queue.popleft()
        self.processed.extend(answer.processed)
        by_index: dict[int, list[ErrorEntry]] = {}
        for error in answer.errors:
            if error.index is not None and 0 <= error.index < len(request.events):
                by_index.setdefault(error.index, []).append(error)
        moved: dict[str, list[int]] = {}
        for index, errors in sorted(by_index.items()):
            origin = request.origins[index]
            home = next((e.endpoint for e in errors if e.code == WRONG_ENDPOINT), None)
            if home and not request.redirected and home != request.url:
                moved.setdefault(home, []).append(index)
            else:
                self.failures.append(
                    (origin, [msgspec.structs.replace(e, index=origin) for e in errors])
                )
        unaccounted = len(request.events) - len(answer.processed) - len(by_index)
        if unaccounted:
            log.error(
                "POST %s: the answer accounts for %d of %d events; the server broke its contract",
                request.url,
                len(answer.processed) + len(by_index),
                len(request.events),
            )
        for home, indexes in moved.items():
            log.warning(
                "POST %s: %d events belong to an account homed on %s; sending them there."
                " Set endpoint=%r (Settings > Integration Settings).",
                request.url,
                len(indexes),
                home,
                home,
            )
            self._queue.append(
                Request(
                    home,
                    f"{request.key[:230]}-moved-{len(self._queue)}",
                    [request.events[i] for i in indexes],
                    [request.origins[i] for i in indexes],
                    [1] * len(indexes),
                    self.options.gzip_min_bytes,
                    redirected=True,
                )
            )

    # --- the log: every call, with its timings ---------------------------------------------

    def _log_call(
        self,
        request: Request,
        status: int,
        seconds: float,
        answer: EventsResponse | _Counted,
        raw: Answer,
    ) -> None:
        failed = len(answer.failed)
        level = logging.WARNING if failed else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "POST %s: %d events, %d bytes%s, status %d in %.3f s: %d processed, %d failed%s",
                request.url,
                len(request.events),
                len(request.body),
                " gzip" if "content-encoding" in request.headers else "",
                status,
                seconds,
                len(answer.processed),
                failed,
                " (a replay: stored before)" if raw.headers.get("idempotent-replayed") else "",
            )

    def _log_failure(
        self, request: Request, cause: str, detail: str, seconds: float, delay: float | None
    ) -> None:
        # A WARNING for each new cause, and for the same one again after warn_interval;
        # INFO in between: an outage is a line, not a line per try.
        now = time.monotonic()
        level = logging.WARNING
        if delay is not None and now - self._warned.get(cause, -math.inf) < (
            self.options.warn_interval
        ):
            level = logging.INFO
        elif delay is not None:
            self._warned[cause] = now
        if not log.isEnabledFor(level):
            return
        then = f"retrying in {delay:.2f} s" if delay is not None else "not retried"
        log.log(
            level,
            "POST %s: %d events, %d bytes, try %d failed after %.3f s: %s %s; %s",
            request.url,
            len(request.events),
            len(request.body),
            request.tries,
            seconds,
            cause,
            detail,
            then,
        )
