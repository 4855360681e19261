"""The ASGI application: routing, lifespan, the access log.

POST /events        ingest (see ingest.py)
GET  /healthz       the process is alive
GET  /readyz        the store takes writes (503 if not)
GET  /metrics       Prometheus
GET  /openapi.json  the API contract
*    /admin/...     the admin API (admin.py), when an admin token is set
GET  /, /ui/...     the dashboard (qlevents.ui)
"""

from __future__ import annotations

import gc
import logging
import time
from importlib import resources
from typing import Final

from qlevents._exceptions import StoreUnavailableError
from qlevents.accounts import KEY_PREFIX, AccountBook
from qlevents.server.access_log import AccessLog
from qlevents.server.admin import Admin
from qlevents.server.config import Settings
from qlevents.server.directory import AccountDirectory
from qlevents.server.ingest import ClientDisconnected, Ingest
from qlevents.server.metrics import CONTENT_TYPE, Metrics
from qlevents.server.ratelimit import RateLimiter
from qlevents.server.responses import send_body, send_json, send_request_error
from qlevents.server.types import Receive, Scope, Send
from qlevents.store.base import EventStore
from qlevents.store.factory import build_store
from qlevents.ui import Dashboard

log: Final = logging.getLogger("qlevents.server")


def _printable(text: str) -> str:
    # One log line per request, always: control characters in what a client sent are escaped.
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class EventsApp:
    """The whole service as one ASGI callable."""

    def __init__(self, settings: Settings, store: EventStore | None = None) -> None:
        if settings.admin_token.startswith(KEY_PREFIX):
            raise ValueError("the admin token must not look like a client key; generate a new one")
        self.settings = settings
        self.metrics = Metrics()
        self.store = (
            store
            if store is not None
            else build_store(settings.storage, settings.data_dir, observer=self.metrics.commit)
        )
        self.directory = AccountDirectory(AccountBook(settings.data_dir), settings.endpoint_url)
        self.limiter = RateLimiter(
            settings.rate_limit, settings.rate_burst, share=1 / max(1, settings.workers)
        )
        self.directory.listeners.append(self.limiter.update)
        self.ingest = Ingest(
            self.store,
            self.directory,
            self.metrics,
            self.limiter,
            max_body_bytes=settings.max_body_bytes,
            max_events=settings.max_events,
            max_inflight_requests=settings.max_inflight_requests,
            max_inflight_bytes=settings.max_inflight_bytes,
        )
        self.admin = Admin(self.directory, settings.admin_token) if settings.admin_token else None
        self.admin_port = settings.admin_port
        self.openapi = (resources.files("qlevents.server") / "openapi.json").read_bytes()
        self.access_log = AccessLog() if settings.access_log else None
        self.dashboard = Dashboard(settings.data_dir, self.directory, self.ingest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                await self._http(scope, receive, send)
            except Exception:
                # A bug, not a client's doing: log it whole and still answer in the contract's
                # shape (if the answer has not started; uvicorn closes the connection if it has).
                log.exception(
                    "unhandled error on %s %s", scope["method"], _printable(scope["path"])
                )
                self.metrics.request("error", 500)
                await send_request_error(
                    send, 500, "internal_error", "the server failed on this request; retry later."
                )
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.store.open()
                    await self.directory.start()
                    await self.dashboard.start()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # What start-up allocated lives as long as the process: keep it out of the
                # collector's way (full collections otherwise walk it again and again).
                gc.freeze()
                # Frozen objects do not count as long-lived, so with the default thresholds
                # the in-flight requests of ~2,000 connections, promoted as they survived
                # young collections, set off a full collection every ~250 ms: 20-65 ms each,
                # collecting nothing (gc.callbacks, during a soak's overload phase). A larger
                # first generation lets requests finish before they are ever scanned: GC time
                # 6.8 -> 2.2 s over the same 90 s, 27% more requests answered, steady p99
                # 12.7 -> 5.7 ms (10,000 gave 3.8 s).
                gc.set_threshold(50_000, 20, 100)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.directory.stop()
                await self.dashboard.stop()
                await self.store.close()
                self.directory.book.close()
                if self.access_log is not None:
                    self.access_log.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        processed = failed = 0
        target = path
        if self.admin_port:
            # The admin API has a listener of its own: only admin routes there, none here.
            server = scope.get("server")
            on_admin_port = server is not None and server[1] == self.admin_port
            if on_admin_port != path.startswith("/admin/"):
                target = ""  # answered 404 below
        if target == "/events":
            route = "/events"
            if method == "POST":
                try:
                    outcome = await self.ingest(scope, receive, send)
                except ClientDisconnected:
                    return
                status, processed, failed = outcome.status, outcome.processed, outcome.failed
                self.metrics.request_seconds.observe(time.perf_counter() - started)
            else:
                status = 405
                await send_request_error(
                    send,
                    405,
                    "method_not_allowed",
                    f"{method} is not allowed on /events; send events with POST.",
                    [(b"allow", b"POST")],
                )
        elif target.startswith("/admin/") and self.admin is not None:
            route = "/admin"
            status = await self.admin(scope, receive, send)
        elif target in ("/", "/ui") or target.startswith("/ui/"):
            route = "/ui"
            status = await self.dashboard(scope, receive, send)
        elif method in ("GET", "HEAD") and target in _GET_ROUTES:
            route = target
            status = await getattr(self, _GET_ROUTES[target])(send)
        else:
            route = "other"
            status = 404
            await send_request_error(
                send, 404, "not_found", f"there is nothing at {method} {_printable(path)}."
            )
        self.metrics.request(route, status)
        if self.access_log is not None:
            self.access_log.line(
                scope.get("client"),
                method,
                _printable(path),
                status,
                processed,
                failed,
                time.perf_counter() - started,
            )

    async def healthz(self, send: Send) -> int:
        await send_json(send, 200, {"status": "ok"})
        return 200

    async def readyz(self, send: Send) -> int:
        try:
            await self.store.check_writable()
        except StoreUnavailableError as exc:
            await send_json(send, 503, {"status": "unavailable", "reason": str(exc)})
            return 503
        await send_json(send, 200, {"status": "ready"})
        return 200

    async def metrics_page(self, send: Send) -> int:
        body = self.metrics.exposition()
        await send_body(send, 200, body, content_type=(b"content-type", CONTENT_TYPE.encode()))
        return 200

    async def openapi_page(self, send: Send) -> int:
        await send_body(send, 200, self.openapi)
        return 200


_GET_ROUTES: Final = {
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics_page",
    "/openapi.json": "openapi_page",
}


def create_app() -> EventsApp:
    """The factory uvicorn calls in every worker: settings come from QLEVENTS_* variables."""
    return EventsApp(Settings.from_env())
