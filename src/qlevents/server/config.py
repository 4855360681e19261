"""The server's settings, read from ``QLEVENTS_*`` environment variables.

``qlevents serve`` turns its options into these variables so that every worker process
(uvicorn starts them fresh) builds the same configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final

from qlevents.events import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST

DEFAULT_DATA_DIR: Final = "./qlevents-data"


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    endpoint_url: str = "http://127.0.0.1:8080/events"
    #: Largest request body, after gzip decompression (bytes).
    max_body_bytes: int = MAX_BODY_BYTES
    #: Most events in one request.
    max_events: int = MAX_EVENTS_PER_REQUEST
    #: Bearer token of the admin API; empty disables the admin API.
    admin_token: str = ""
    #: SQLite synchronous mode: FULL (default; every acknowledged write fsync'd) or EXTRA.
    synchronous: str = "FULL"
    #: "sqlite" (default) or "memory" (nothing survives; for trying the API).
    store: str = "sqlite"
    access_log: bool = True
    #: Seconds a client may take to send a request's headers, then its body (slowloris).
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    #: Requests one worker takes at once, and their bytes; past either it answers 503.
    max_inflight_requests: int = 1024
    max_inflight_bytes: int = 256 * 1024 * 1024
    #: Events the store may hold waiting for a commit before the API answers 503.
    max_pending_events: int = 200_000
    #: Default per-account rate limit (events/s; 0 = unlimited) and burst (events).
    rate_limit: float = 0.0
    rate_burst: float = 0.0
    #: Worker processes (each holds 1/workers of every rate limit).
    workers: int = 1
    #: Serve the admin API on this port only (0: on the main port, beside /events).
    admin_port: int = 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"QLEVENTS_{f.name.upper()}")
            if raw is None:
                continue
            if f.type == "Path":
                values[f.name] = Path(raw)
            elif f.type == "int":
                values[f.name] = int(raw)
            elif f.type == "float":
                values[f.name] = float(raw)
            elif f.type == "bool":
                values[f.name] = raw.lower() in {"1", "true", "yes", "on"}
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            env[f"QLEVENTS_{f.name.upper()}"] = (
                ("1" if value else "0") if isinstance(value, bool) else str(value)
            )
        return env
