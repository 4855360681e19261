"""The network seam: one method to implement, ``post``, in a sync and an async flavour.

``Client`` sends with :class:`HTTPTransport`: keep-alive HTTP/1.1 on the standard library's
``http.client``, trusting what httpx trusts (``SSL_CERT_FILE`` or ``SSL_CERT_DIR``, else
certifi). It does the one thing the sender
needs, a POST with a bytes body, with a fraction of a general client's per-request Python
work, which matters because the sender shares the GIL with the application's threads. When
an HTTP(S) proxy is configured for the endpoint (``HTTPS_PROXY`` and friends) it falls back
to :class:`HTTPXTransport`, which honours proxies. ``AsyncClient`` uses httpx's async client
(and, at interpreter exit, its loop gone, the same blocking transport as ``Client``).
``qlevents.testing.RecordingTransport`` stands in for the network in an integrator's tests.
"""

from __future__ import annotations

import asyncio
import errno
import http.client
import os
import select
import socket
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from qlevents._version import __version__

if TYPE_CHECKING:  # httpx is imported when first used: it takes ~40 ms (rich, click...)
    import httpx
from qlevents._exceptions import TransportError

USER_AGENT = f"qlevents-python/{__version__}"


#: httpx's timeouts, by name: httpx is imported only when used.
_TIMEOUTS: Final = frozenset({"ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout"})


class NoConnection(TransportError):
    """No connection could be opened (refused, DNS, connect timeout, TLS handshake)."""


def cause_of(error: BaseException) -> str:
    """Why a try got no answer, in a few words, from ``error`` and what it wraps: the
    transports raise TransportError from the socket's, http.client's or httpx's error."""
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    names = {type(link).__name__ for link in chain}
    connecting = any(isinstance(link, NoConnection) for link in chain) or bool(
        names & {"ConnectError", "ConnectTimeout"}
    )
    for link in chain:
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        if isinstance(link, socket.gaierror):
            return "DNS lookup failed"
        if isinstance(link, ssl.SSLCertVerificationError):
            return "TLS certificate not trusted"
        if isinstance(link, ssl.SSLError):
            return "TLS error"
        if isinstance(link, OSError) and link.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "network unreachable"
    if names & _TIMEOUTS or any(isinstance(link, TimeoutError) for link in chain):
        return "connect timeout" if connecting else "timeout waiting for the answer"
    if names & {"ConnectionResetError", "BrokenPipeError", "ConnectionAbortedError"}:
        return "connection reset"
    if names & {"RemoteDisconnected", "RemoteProtocolError", "IncompleteRead"}:
        return "connection closed before the answer"
    return "could not connect" if connecting else "network error"


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: its status, its headers (lower-case names) and its body."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Transport:
    """Sends one POST and returns the answer; raises TransportError when there is none."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        raise NotImplementedError  # pragma: no cover

    def close(self) -> None:
        """Release connections."""


class AsyncTransport:
    """The asyncio flavour of :class:`Transport`."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        raise NotImplementedError  # pragma: no cover

    async def aclose(self) -> None:
        """Release connections."""


def _timeout(connect: float, total: float) -> httpx.Timeout:
    import httpx

    return httpx.Timeout(total, connect=connect)


def _answer(response: httpx.Response) -> Answer:
    return Answer(response.status_code, response.content, dict(response.headers.items()))


#: Connections of a parent process: a forked child drops them without closing (not its own).
_inherited: list[Any] = []


def trusted_context() -> ssl.SSLContext:
    """The certificates HTTPS endpoints are verified with, as httpx chooses them (so that
    ``Client`` and ``AsyncClient`` trust the same): ``SSL_CERT_FILE`` or ``SSL_CERT_DIR``
    when set (an installation behind a private CA), else certifi's."""
    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    try:
        import certifi  # httpx's trust store

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with httpx
        return ssl.create_default_context()


class HTTPTransport(Transport):
    """Keep-alive HTTP/1.1 connections on ``http.client``; a fresh pool after a fork."""

    def __init__(self, connect_timeout: float = 1.0, timeout: float = 2.5) -> None:
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._pid = os.getpid()
        self._tls: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = trusted_context()
        return self._tls

    def _checkout(self, origin: tuple[str, str, int]) -> http.client.HTTPConnection:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours
                _inherited.append(self._idle)
                self._idle = {}
                self._pid = os.getpid()
            idle = self._idle.get(origin)
            while idle:
                reused = idle.pop()
                if not _stale(reused):
                    return reused
                reused.close()
        scheme, host, port = origin
        if scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=self.connect_timeout, context=self._context()
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        connection.connect()  # within connect_timeout; then each read/write within timeout
        assert connection.sock is not None
        connection.sock.settimeout(self.timeout)
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        origin = (scheme, parts.hostname or "", port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection = self._checkout(origin)
        except OSError as exc:
            raise NoConnection(f"{type(exc).__name__}: {exc or 'no detail'}") from exc
        try:
            connection.request(
                "POST", target, body=body, headers={"user-agent": USER_AGENT, **headers}
            )
            response = connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise TransportError(f"{type(exc).__name__}: {exc or 'no detail'}") from exc
        answer = Answer(response.status, content, {k.lower(): v for k, v in response.getheaders()})
        if response.will_close:
            connection.close()
        else:
            with self._lock:
                if self._pid == os.getpid():
                    self._idle.setdefault(origin, []).append(connection)
        return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
            if self._pid != os.getpid():
                _inherited.append(idle)
                return
        for connections in idle.values():
            for connection in connections:
                connection.close()


def _stale(connection: http.client.HTTPConnection) -> bool:
    # An idle keep-alive socket that is readable was closed by the server (EOF waiting):
    # don't send on it, the request would fail half-way.
    sock = connection.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def uses_proxy(url: str) -> bool:
    """Whether the environment configures an HTTP(S) proxy for ``url`` (as httpx would)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not proxies.get(parts.scheme.lower()) and not proxies.get("all"):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


def default_transport(url: str, connect_timeout: float, timeout: float) -> Transport:
    """The transport ``Client`` uses unless given one."""
    if uses_proxy(url):
        return HTTPXTransport(connect_timeout, timeout)
    return HTTPTransport(connect_timeout, timeout)


class HTTPXTransport(Transport):
    """Pooled keep-alive connections through ``httpx.Client``; a fresh pool after a fork."""

    def __init__(self, connect_timeout: float = 1.0, timeout: float = 2.5) -> None:
        self._timeout = _timeout(connect_timeout, timeout)
        self._client: httpx.Client | None = None
        self._pid = os.getpid()

    def _http(self) -> httpx.Client:
        import httpx

        if self._client is None or self._pid != os.getpid():
            # After a fork the parent's sockets are not ours to use (nor to close).
            self._client = httpx.Client(
                timeout=self._timeout, headers={"user-agent": USER_AGENT}, follow_redirects=False
            )
            self._pid = os.getpid()
        return self._client

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        import httpx

        try:
            return _answer(self._http().post(url, content=body, headers=headers))
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc or 'no detail'}") from exc

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None


class AsyncHTTPXTransport(AsyncTransport):
    """Pooled keep-alive connections through ``httpx.AsyncClient``; a fresh pool per loop."""

    def __init__(self, connect_timeout: float = 1.0, timeout: float = 2.5) -> None:
        self._timeout = _timeout(connect_timeout, timeout)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A pool's connections belong to the loop that opened them (asyncio.run twice).
            self._client = httpx.AsyncClient(
                timeout=self._timeout, headers={"user-agent": USER_AGENT}, follow_redirects=False
            )
            self._loop = loop
        return self._client

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        import httpx

        try:
            return _answer(await self._http().post(url, content=body, headers=headers))
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc or 'no detail'}") from exc

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


class BlockingTransport(Transport):
    """An :class:`AsyncTransport` driven on a private event loop, one post at a time: how
    ``AsyncClient`` sends at interpreter exit through a transport it was given."""

    def __init__(self, transport: AsyncTransport) -> None:
        self.transport = transport
        self._loop = asyncio.new_event_loop()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        return self._loop.run_until_complete(self.transport.post(url, body, headers))

    def close(self) -> None:
        self._loop.close()
