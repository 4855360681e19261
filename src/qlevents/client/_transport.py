"""The network seam: one method to implement, ``post``, in a sync and an async flavour.

The default transports use httpx with low timeouts. ``qlevents.testing.RecordingTransport``
stands in for the network in an integrator's tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from qlevents import __version__
from qlevents._exceptions import TransportError

USER_AGENT = f"qlevents-python/{__version__}"


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
    return httpx.Timeout(total, connect=connect)


def _answer(response: httpx.Response) -> Answer:
    return Answer(response.status_code, response.content, dict(response.headers.items()))


class HTTPXTransport(Transport):
    """Pooled keep-alive connections through ``httpx.Client``; a fresh pool after a fork."""

    def __init__(self, connect_timeout: float = 1.0, timeout: float = 2.5) -> None:
        self._timeout = _timeout(connect_timeout, timeout)
        self._client: httpx.Client | None = None
        self._pid = os.getpid()

    def _http(self) -> httpx.Client:
        if self._client is None or self._pid != os.getpid():
            # After a fork the parent's sockets are not ours to use (nor to close).
            self._client = httpx.Client(
                timeout=self._timeout, headers={"user-agent": USER_AGENT}, follow_redirects=False
            )
            self._pid = os.getpid()
        return self._client

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        try:
            return _answer(self._http().post(url, content=body, headers=headers))
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc or 'no detail'}") from exc

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None


class AsyncHTTPXTransport(AsyncTransport):
    """Pooled keep-alive connections through ``httpx.AsyncClient``."""

    def __init__(self, connect_timeout: float = 1.0, timeout: float = 2.5) -> None:
        self._client = httpx.AsyncClient(
            timeout=_timeout(connect_timeout, timeout),
            headers={"user-agent": USER_AGENT},
            follow_redirects=False,
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        try:
            return _answer(await self._client.post(url, content=body, headers=headers))
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc or 'no detail'}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
