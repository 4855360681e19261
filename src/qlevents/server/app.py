"""The ASGI application: a route table per listener, lifespan, the access log and metrics.

POST /events        ingest (ingest.py), taken before the table: the hot path
GET  /healthz       the process is alive
GET  /readyz        the store takes writes (503 if not)
GET  /metrics       Prometheus
GET  /openapi.json  the API contract
*    /admin/...     the admin API (admin.py), when an admin token is set; with --admin-port,
                    on that listener alone, and nothing else there
GET  /, /ui/...     the dashboard (qlevents.ui), which answers its own errors as pages

Errors the table finds (no route; 405 on /events) and bugs are answered in the shape of the
API the request was for: the events contract's JSON, the admin API's problem JSON.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from importlib import resources
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router

from qlevents._exceptions import StoreUnavailableError
from qlevents.accounts import KEY_PREFIX
from qlevents.server.access_log import AccessLog
from qlevents.server.admin import Admin
from qlevents.server.body import ClientDisconnected
from qlevents.server.config import Settings
from qlevents.server.directory import AccountDirectory
from qlevents.server.ingest import Ingest
from qlevents.server.metrics import CONTENT_TYPE, Metrics
from qlevents.server.ratelimit import RateLimiter
from qlevents.server.responses import MsgspecJSONResponse, send_problem, send_request_error
from qlevents.server.types import Message, Receive, Scope, Send
from qlevents.store.base import EventStore
from qlevents.store.factory import build_account_book, build_store
from qlevents.ui import Dashboard

log: Final = logging.getLogger("qlevents.server")
#: The most a worker's shutdown (after its requests) may take: the dashboard, the account
#: book and the store each bound their own steps; this bounds them together.
SHUTDOWN_SECONDS: Final = 15.0
#: The health probes: their successful answers are left out of the access log unless asked
#: for (--access-log-probes); a failed probe is logged.
PROBES: Final = frozenset({"/healthz", "/readyz"})


def _printable(text: str) -> str:
    # One log line per request, always: control characters in what a client sent are escaped.
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class EventsApp:
    """The whole service as one ASGI callable."""

    def __init__(self, settings: Settings, store: EventStore | None = None) -> None:
        if settings.admin_token.startswith(KEY_PREFIX):
            raise ValueError("the admin token must not look like a client key; generate a new one")
        self.metrics = Metrics()
        self.store = (
            store
            if store is not None
            else build_store(
                settings.storage,
                settings.data_dir,
                observer=self.metrics.commit,
                publish_observer=self.metrics.publish,
            )
        )
        self.directory = AccountDirectory(
            build_account_book(settings.storage, settings.data_dir), settings.endpoint_url
        )
        # Each worker of each ingest node holds its share of every limit (docs/cluster.md).
        nodes = settings.storage.cluster_nodes if settings.storage.is_nats else 1
        limiter = RateLimiter(
            settings.rate_limit, settings.rate_burst, share=1 / (max(1, settings.workers) * nodes)
        )
        self.directory.listeners.append(limiter.update)
        self.ingest = Ingest(
            self.store,
            self.directory,
            self.metrics,
            limiter,
            max_body_bytes=settings.max_body_bytes,
            max_events=settings.max_events,
            max_inflight_requests=settings.max_inflight_requests,
            max_inflight_bytes=settings.max_inflight_bytes,
        )
        self.openapi = (resources.files("qlevents.server") / "openapi.json").read_bytes()
        self.access_log = AccessLog() if settings.access_log else None
        self.dashboard = Dashboard(
            settings.data_dir, self.directory, self.ingest, settings.dashboard, settings.storage
        )
        if self.dashboard.shared is not None:
            self.dashboard.shared.drop_observer = self.metrics.activity_drop_observer()
        self.unlogged = frozenset() if settings.access_log_probes else PROBES

        # One route table per listener. With --admin-port the admin API has that listener to
        # itself: its routes are there and nowhere else, and nothing else is there.
        admin = (
            [Mount("/admin", app=Admin(self.directory, settings.admin_token))]
            if settings.admin_token
            else []
        )
        self.admin_port = settings.admin_port
        self.routes = _table(
            # POST /events is taken before the table (_http); the table answers 405 for the rest.
            Route("/events", self.ingest, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_page, methods=["GET"]),
            Route("/openapi.json", self.openapi_page, methods=["GET"]),
            *([] if self.admin_port else admin),
            Route("/", _to_dashboard, methods=["GET"]),
            Route("/ui", _to_dashboard, methods=["GET"]),
            Mount("/ui", app=self.dashboard),
        )
        self.admin_routes = _table(*admin) if self.admin_port else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                await self._http(scope, receive, send)
            except Exception:
                # A bug, not a client's doing: log it whole and still answer in the API's shape
                # (if the answer has not started; uvicorn closes the connection if it has).
                log.exception(
                    "unhandled error on %s %s", scope["method"], _printable(scope["path"])
                )
                self.metrics.request("error", 500)
                await _send_error(
                    scope,
                    send,
                    500,
                    "internal_error",
                    "the server failed on this request; retry later.",
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
                # collector's way, and let requests finish before a collection ever scans them
                # (measured: docs/architecture.md, "Garbage collection").
                gc.freeze()
                gc.set_threshold(50_000, 20, 100)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await asyncio.wait_for(self._shut_down(), SHUTDOWN_SECONDS)
                except TimeoutError:
                    # Each step has bounds of its own; this one makes sure a stop signal
                    # always ends the process (a cluster gone quiet mid-close was seen to
                    # hold a test's server for an hour).
                    log.error("shutting down took over %.0f s; stopping anyway", SHUTDOWN_SECONDS)
                if self.access_log is not None:
                    self.access_log.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _shut_down(self) -> None:
        await self.directory.stop()
        await self.dashboard.stop()
        await self.store.close()
        self.directory.book.close()  # bounded by itself (a thread of its own on a cluster)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        routes = self.routes
        if self.admin_routes is not None:
            server = scope.get("server")
            if server is not None and server[1] == self.admin_port:
                routes = self.admin_routes
        if path == "/events" and method == "POST" and routes is self.routes:
            # The hot path: straight to the table's endpoint, without the router (measured:
            # docs/architecture.md, "Costs on the request path"), with the outcome's counts.
            try:
                outcome = await self.ingest(scope, receive, send)
            except ClientDisconnected:
                return
            route, status = "/events", outcome.status
            processed, failed = outcome.processed, outcome.failed
            self.metrics.request_seconds.observe(time.perf_counter() - started)
        else:
            routed = await self._route(routes, scope, receive, send)
            if routed is None:
                return
            route, status = routed
            processed = failed = 0
        self.metrics.request(route, status)
        if self.access_log is not None and (status >= 400 or path not in self.unlogged):
            self.access_log.line(
                scope.get("client"),
                method,
                _printable(path),
                status,
                processed,
                failed,
                time.perf_counter() - started,
            )

    async def _route(
        self, routes: Router, scope: Scope, receive: Receive, send: Send
    ) -> tuple[str, int] | None:
        """Answer through the route table: the metrics' route label and the status, or None
        if the client went away first."""
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # Naming the app in the scope makes Starlette's routers raise HTTPException for what
        # they cannot route (instead of answering plain text): answered below, in our shapes.
        scope["app"] = self
        try:
            await routes(scope, receive, sending)
        except HTTPException as exc:
            path, method = scope["path"], scope["method"]
            if exc.status_code == 405 and path == "/events":
                await _send_error(
                    scope,
                    send,
                    405,
                    "method_not_allowed",
                    f"{method} is not allowed on /events; send events with POST.",
                    [(b"allow", b"POST")],
                )
                return "/events", 405
            # Elsewhere a method a path does not take finds nothing there, as a path does not.
            await _send_error(
                scope, send, 404, "not_found", f"there is nothing at {method} {_printable(path)}."
            )
            return "other", 404
        except (ClientDisconnected, ClientDisconnect):
            return None
        return _route_label(scope["path"]), status

    async def healthz(self, request: Request) -> Response:
        return MsgspecJSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            await self.store.check_writable()
        except StoreUnavailableError as exc:
            return MsgspecJSONResponse({"status": "unavailable", "reason": str(exc)}, 503)
        return MsgspecJSONResponse({"status": "ready"})

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    async def openapi_page(self, request: Request) -> Response:
        return Response(self.openapi, media_type="application/json")


async def _to_dashboard(request: Request) -> Response:
    return RedirectResponse("/ui/", 303)


def _table(*routes: BaseRoute) -> Router:
    return Router(list(routes), redirect_slashes=False)


def _route_label(path: str) -> str:
    """The metrics' label of a request the table took: its path's first segment, which names
    the table's entry ("/healthz"; "/admin" for every admin route). The labels stay few as
    long as no entry has a parameter in its first segment."""
    end = path.find("/", 1)
    return path if end < 0 else path[:end]


async def _send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error answer in the shape of the API the request was for."""
    if scope["path"].startswith("/admin/"):
        await send_problem(send, status, code, message, headers)
    # (The dashboard under /ui answers its own errors, as pages; it never reaches here.)
    else:
        await send_request_error(send, status, code, message, headers)


def create_app() -> EventsApp:
    """The factory uvicorn calls in every worker: settings come from QLEVENTS_* variables."""
    return EventsApp(Settings.from_env())
