"""The server's settings, read from ``QLEVENTS_*`` environment variables.

``qlevents serve`` turns its options into these variables so that every worker process
(uvicorn starts them fresh) builds the same configuration. The event store's own settings
are a group of their own (:class:`~qlevents.store.factory.StoreSettings`), read from the
same flat variables (``QLEVENTS_STORE``, ``QLEVENTS_SYNCHRONOUS``, ...); so are the
dashboard's (:class:`DashboardSettings`: ``QLEVENTS_KEY_GRACE_SECONDS``,
``QLEVENTS_FAILED_KEEP``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final

import msgspec

from qlevents import settings as _settings
from qlevents.accounts import DEFAULT_GRACE_SECONDS, MAX_GRACE_SECONDS
from qlevents.events import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST
from qlevents.server.activity import ActivitySettings
from qlevents.store.factory import StoreSettings

DEFAULT_DATA_DIR: Final = "./qlevents-data"

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class DashboardSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The dashboard's settings: key rotation, and the activity ledger's bounds."""

    #: How long a rotated key keeps working unless the rotation says otherwise (seconds).
    key_grace_seconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_GRACE_SECONDS)] = (
        DEFAULT_GRACE_SECONDS
    )
    activity: ActivitySettings = ActivitySettings()


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    endpoint_url: str = "http://127.0.0.1:8080/events"
    #: Largest request body, after gzip decompression (bytes).
    max_body_bytes: Positive = MAX_BODY_BYTES
    #: Most events in one request.
    max_events: Positive = MAX_EVENTS_PER_REQUEST
    #: Bearer token of the admin API; empty disables the admin API.
    admin_token: str = ""
    #: Which event store, and its settings.
    storage: StoreSettings = StoreSettings()
    access_log: bool = True
    #: Log the health probes' successful answers too (GET /healthz, /readyz; a failed probe
    #: is always logged).
    access_log_probes: bool = False
    #: Write the log to this file instead of standard error; reopened on SIGHUP (logrotate).
    log_file: str = ""
    #: Seconds a client may take to send a request's headers, then its body (slowloris).
    header_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    body_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: Requests one worker takes at once, and their bytes; past either it answers 503.
    max_inflight_requests: Positive = 1024
    max_inflight_bytes: Positive = 256 * 1024 * 1024
    #: Default per-account rate limit (events/s; 0 = unlimited) and burst (events).
    rate_limit: NonNegative = 0.0
    rate_burst: NonNegative = 0.0
    #: Worker processes (each holds 1/workers of every rate limit).
    workers: Positive = 1
    #: Serve the admin API on this port only (0: on the main port, beside /events).
    admin_port: Port = 0
    #: The dashboard's group.
    dashboard: DashboardSettings = DashboardSettings()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the ``QLEVENTS_*`` variables give (defaults for the others)."""
        return _settings.from_env(cls, environ)

    def to_env(self) -> dict[str, str]:
        """The ``QLEVENTS_*`` variables that :meth:`from_env` reads back as these settings."""
        return _settings.to_env(self)
