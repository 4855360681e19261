"""uvicorn's httptools protocol with deadlines for receiving a request (slowloris).

uvicorn has no timeout while a request is being received: its keep-alive timer only runs
between requests, so a client that trickles a header line every few seconds holds a
connection forever, and ASGI middleware cannot help (it runs after the headers). Here each
connection carries a deadline: ``header_timeout`` from its first byte (or from connecting)
to the end of the headers, then ``body_timeout`` to the end of the body. One sweep a second
closes the connections past their deadline with a 408 in the contract's shape; the cost on
the hot path is a float assignment per parser callback, not a timer per request.

A connection closed after an answer that came before the end of the request's body (a 413
on Content-Length, with ``Connection: close``) is closed the way nginx's lingering close
does it: the answer and a FIN go out, and up to ``LINGER_BYTES`` more of the body are read
and thrown away for at most ``LINGER_SECONDS``. Closing at once, with the body unread, makes
the kernel answer the client's next bytes with a reset, and a client that sends its whole
body before reading (Python's urllib, which never sends ``Expect: 100-continue``) would see
the reset instead of the answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from qlevents.server.config import Settings
from qlevents.server.responses import request_error

SWEEP_SECONDS: Final = 1.0
LINGER_BYTES: Final = 8 * 1024 * 1024
LINGER_SECONDS: Final = 2.0
log: Final = logging.getLogger("qlevents.access")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0
    _open: ClassVar[set[GuardedHttpToolsProtocol]] = set()
    _sweeper: ClassVar[asyncio.TimerHandle | None] = None
    _configured: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if not cls._configured:
            settings = Settings.from_env()
            cls.header_timeout = settings.header_timeout
            cls.body_timeout = settings.body_timeout
            cls._configured = True
        self._deadline = math.inf
        self._waiting_for = "headers"
        self._reading_body = False
        self._lingering = False
        self._discarded = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self.header_timeout)
        self._open.add(self)
        if GuardedHttpToolsProtocol._sweeper is None:
            GuardedHttpToolsProtocol._sweeper = self.loop.call_later(
                SWEEP_SECONDS, _sweep, self.loop
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # the request was answered: its body is read and dropped
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.transport.close()
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm("headers", self.header_timeout)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm("body", self.body_timeout)
        self._reading_body = True
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle.transport, _OneWriteTransport):
            cycle.transport = _OneWriteTransport(  # type: ignore[assignment]
                cycle.transport, self._close_after_answer
            )

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and isinstance(cycle.transport, _OneWriteTransport):
            cycle.transport.flush()  # a HEAD answer has no body write to carry its head
        super().on_response_complete()
        if self._lingering:
            self._unset_keepalive_if_required()  # the linger's deadline closes it

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._deadline = math.inf
        self._reading_body = False

    def _close_after_answer(self) -> None:
        """Close the connection after an answer; with the request's body still coming, read
        and drop a bounded part of it first (the module's docstring says why)."""
        transport = self.transport
        if not self._reading_body or transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        self._lingering = True
        self._arm("linger", LINGER_SECONDS)
        transport.write_eof()  # after the answer, which is already in the write buffer
        self.flow.resume_reading()

    def _arm(self, waiting_for: str, seconds: float) -> None:
        self._waiting_for = waiting_for
        self._deadline = self.loop.time() + seconds if seconds > 0 else math.inf

    def _expire(self) -> None:
        self._deadline = math.inf
        if self._lingering:
            self.transport.close()
            return
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started
        if not answered and not self.transport.is_closing():
            limit = self.header_timeout if self._waiting_for == "headers" else self.body_timeout
            body = request_error(
                "request_timeout",
                f"the request's {self._waiting_for} did not arrive within {limit:g} seconds.",
            )
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
        client = self.client
        log.info(
            '%s "- -" 408 timed out waiting for the %s',
            f"{client[0]}:{client[1]}" if client else "-",
            self._waiting_for,
        )
        self.transport.close()


class _OneWriteTransport:
    """Holds a response's head until its body's first write, so both go in one send().

    uvicorn writes the head at ``http.response.start`` and the body at ``http.response.body``:
    two system calls for every small answer (measured: docs/architecture.md, "Costs on the
    request path"). Anything else (a ``100 Continue``, a close) goes at once.
    """

    __slots__ = ("_close", "_head", "_transport")

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]) -> None:
        self._transport = transport
        self._close = close
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self._head = data
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _sweep(loop: asyncio.AbstractEventLoop) -> None:
    now = loop.time()
    for protocol in list(GuardedHttpToolsProtocol._open):
        if protocol._deadline <= now:
            protocol._expire()
    GuardedHttpToolsProtocol._sweeper = (
        loop.call_later(SWEEP_SECONDS, _sweep, loop) if GuardedHttpToolsProtocol._open else None
    )
