"""The client's options, their defaults, and the checks run on them once, at construction."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from qlevents._exceptions import ClientError
from qlevents.events import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST, ErrorEntry

#: Where the endpoint comes from when the code gives none. There is no default endpoint: the
#: events of a self-hosted installation must never leave for someone else's server.
ENDPOINT_ENV: Final = "QLEVENTS_ENDPOINT"
#: ``on_failure(event, errors)``: an event the server refused or that could not be delivered.
FailureCallback = Callable[[dict[str, Any], Sequence[ErrorEntry]], None]


def resolve_endpoint(endpoint: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The endpoint given, else ``$QLEVENTS_ENDPOINT``; a ClientError naming both if neither."""
    if endpoint is None or not endpoint.strip():
        endpoint = environ.get(ENDPOINT_ENV, "").strip()
    if not endpoint:
        raise ClientError(
            "no endpoint: pass endpoint='https://<your qlevents server>/events' or set the"
            f" {ENDPOINT_ENV} environment variable (your account's endpoint: Settings >"
            " Integration Settings). qlevents sends to no server by default."
        )
    return endpoint.strip()


def check_client_key(client_key: object) -> str:
    if not isinstance(client_key, str) or not client_key.strip():
        raise ClientError(
            "client_key must be your account's client key (a non-empty string); copy it from"
            " Settings > Integration Settings."
        )
    return client_key


@dataclass(frozen=True)
class Options:
    """Every tunable of a client; see docs/sdk.md for what each one does."""

    #: The events URL, from ``endpoint=`` or ``QLEVENTS_ENDPOINT`` (``resolve_endpoint``).
    endpoint: str = ""
    #: Seconds to wait for a connection, and for each read/write of a request.
    connect_timeout: float = 1.0
    timeout: float = 2.5
    #: Events held in memory before new ones are dropped (or spooled).
    max_queue_size: int = 10_000
    #: A batch is closed on the first of: this many events, this many bytes, this many seconds.
    max_batch_events: int = 500
    max_batch_bytes: int = 1024 * 1024
    flush_interval: float = 0.5
    #: Total seconds spent retrying one batch in the background before giving up on it
    #: (never given up with a spool: it waits for the server however long it takes).
    retry_budget: float = 30.0
    #: The same for ``send()``, which runs in the caller's thread.
    send_retry_budget: float = 5.0
    backoff_base: float = 0.1
    backoff_cap: float = 10.0
    #: The longest Retry-After honoured (seconds); longer ones are cut to this.
    retry_after_cap: float = 60.0
    #: Bodies this big or bigger are sent gzip-compressed (0 = always, None = never).
    gzip_min_bytes: int | None = 256 * 1024
    #: Seconds ``close()`` and interpreter exit spend delivering what is still queued.
    shutdown_timeout: float = 5.0
    #: Seconds between two warnings about dropped events.
    warn_interval: float = 10.0

    def check(self) -> None:
        positive = {
            "connect_timeout": self.connect_timeout,
            "timeout": self.timeout,
            "flush_interval": self.flush_interval,
            "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap,
        }
        for name, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise ClientError(f"{name} must be a positive number of seconds; got {value!r}")
        for name, value in {
            "retry_budget": self.retry_budget,
            "send_retry_budget": self.send_retry_budget,
            "retry_after_cap": self.retry_after_cap,
            "shutdown_timeout": self.shutdown_timeout,
            "warn_interval": self.warn_interval,
        }.items():
            if not value >= 0:
                raise ClientError(f"{name} must be 0 or more seconds; got {value!r}")
        if self.max_queue_size < 1:
            raise ClientError(f"max_queue_size must be 1 or more; got {self.max_queue_size!r}")
        if not 1 <= self.max_batch_events <= MAX_EVENTS_PER_REQUEST:
            raise ClientError(
                f"max_batch_events must be from 1 to {MAX_EVENTS_PER_REQUEST} (the server's limit);"
                f" got {self.max_batch_events!r}"
            )
        if not 1024 <= self.max_batch_bytes <= MAX_BODY_BYTES:
            raise ClientError(
                f"max_batch_bytes must be from 1024 to {MAX_BODY_BYTES} (the server's limit);"
                f" got {self.max_batch_bytes!r}"
            )
        if not self.endpoint.lower().startswith(("http://", "https://")):
            raise ClientError(f"endpoint must be an http(s) URL; got {self.endpoint!r}")
        if urlsplit(self.endpoint).path in ("", "/"):
            # The server answers 404 there: every event would be refused.
            raise ClientError(
                f"endpoint is the events URL, with its path; got {self.endpoint!r}: did you"
                f" mean {self.endpoint.rstrip('/') + '/events'!r}?"
            )


@dataclass(frozen=True)
class SpoolOptions:
    """The caps of a spool: at either, new events are dropped, counted and logged."""

    #: The encoded size of the events it holds (the file is somewhat bigger: SQLite's
    #: pages, its index and its WAL). 1 GiB: about five million events of 200 bytes.
    max_bytes: int | None = 1024**3
    #: How many events it holds; None: no cap by count.
    max_events: int | None = None

    def check(self) -> None:
        for name, value in (
            ("spool_max_bytes", self.max_bytes),
            ("spool_max_events", self.max_events),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ClientError(f"{name} must be an integer or None; got {value!r}")
            if value is not None and value < 1:
                raise ClientError(f"{name} must be 1 or more (None: no cap); got {value!r}")
