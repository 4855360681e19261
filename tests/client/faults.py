"""A fault-injecting HTTP proxy in front of the real server, for faults it cannot make.

Each request takes the next fault from ``proxy.faults`` (default: forward it unchanged):

- ``Status(code, retry_after)``: answer ``code`` without forwarding (429, 5xx).
- ``Slow(seconds)``: forward, then hold the answer ``seconds`` (past the client's timeout).
- ``Hang(seconds)``: forward, then never answer; close after ``seconds``.
- ``Reset()``: close the connection without forwarding or answering.
- ``CloseAfter()``: forward and answer, then close the keep-alive connection silently.

Every request is recorded (headers and decompressed body), so tests can check that a retry
carried the same Idempotency-Key.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx


@dataclass(frozen=True)
class Status:
    code: int
    retry_after: str | None = None


@dataclass(frozen=True)
class Slow:
    seconds: float


@dataclass(frozen=True)
class Hang:
    seconds: float


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class CloseAfter:
    """Forward and answer, then close the connection without saying so (an idle timeout)."""


Fault = Status | Slow | Hang | Reset | CloseAfter


@dataclass(frozen=True)
class Seen:
    """A request the proxy received."""

    headers: dict[str, str]
    body: bytes
    fault: Fault | None

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")

    @property
    def events(self) -> list[dict[str, Any]]:
        events = json.loads(self.body)
        return events if isinstance(events, list) else [events]


class FaultProxy:
    """``with FaultProxy(server.events_url) as proxy: Client(key, endpoint=proxy.url)``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: deque[Fault] = deque()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        #: Connections closed by a CloseAfter fault so far.
        self.closed_after = 0
        self._http = httpx.Client(timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                try:
                    proxy._handle(self)
                except (OSError, httpx.HTTPError):
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False
        self._server.block_on_close = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/events"
        # shutdown() waits for serve_forever's next poll: 0.5 s by default, in every teardown.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()  # ends Slow and Hang at once
        self._server.shutdown()
        with self._lock:  # and idle keep-alive connections, so their threads end
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join(10)
        self._http.close()

    def add(self, *faults: Fault) -> FaultProxy:
        with self._lock:
            self.faults.extend(faults)
        return self

    @property
    def keys(self) -> list[str | None]:
        return [seen.key for seen in self.seen]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        plain = gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
            self.seen.append(Seen(headers, plain, fault))
        if isinstance(fault, Reset):
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            handler.close_connection = True
            return
        if isinstance(fault, Status):
            extra = {"retry-after": fault.retry_after} if fault.retry_after else {}
            answer = json.dumps(
                {"processed": [], "failed": [], "errors": [
                    {"index": None, "field": None, "code": "injected", "message": "a fault."}
                ]}
            ).encode()  # fmt: skip
            self._reply(handler, fault.code, answer, extra)
            return
        forwarded = {
            k: v
            for k, v in headers.items()
            if k in ("idempotency-key", "content-encoding", "content-type")
        }
        response = self._http.post(self.upstream, content=body, headers=forwarded)
        extra = {
            k: v for k, v in response.headers.items() if k in ("retry-after", "idempotent-replayed")
        }
        if isinstance(fault, Slow):
            self._closing.wait(fault.seconds)
        if isinstance(fault, Hang):
            self._closing.wait(fault.seconds)
            handler.close_connection = True
            return
        self._reply(handler, response.status_code, response.content, extra)
        if isinstance(fault, CloseAfter):
            handler.close_connection = True
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self.closed_after += 1

    @staticmethod
    def _reply(
        handler: BaseHTTPRequestHandler, status: int, body: bytes, extra: dict[str, str]
    ) -> None:
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        for name, value in extra.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
