"""The transports name why a try got no answer (``cause_of``): refused, DNS, timeout, reset."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import httpx
import pytest

from qlevents import TransportError
from qlevents.client import HTTPTransport, HTTPXTransport, Transport
from qlevents.client._transport import AsyncHTTPXTransport, NoConnection, cause_of
from tests.client.faults import FaultProxy, Hang, Reset
from tests.support import free_port

SYNC_TRANSPORTS = pytest.mark.parametrize(
    "make", [HTTPTransport, HTTPXTransport], ids=["http.client", "httpx"]
)


def failure(transport: Transport, url: str) -> TransportError:
    """The TransportError ``transport`` raises posting to ``url``."""
    with pytest.raises(TransportError) as failed:
        transport.post(url, b"[]", {"content-type": "application/json"})
    transport.close()
    return failed.value


@SYNC_TRANSPORTS
class TestCausesOnARealSocket:
    def test_a_closed_port_is_connection_refused(self, make: Any) -> None:
        """Nothing listens on the port: 'connection refused', not a timeout, not 'closed'."""
        error = failure(make(0.5, 0.5), f"http://127.0.0.1:{free_port()}/events")
        assert cause_of(error) == "connection refused"

    def test_a_server_that_never_answers_is_a_timeout(
        self, make: Any, shared_proxy: FaultProxy
    ) -> None:
        """Connected, but no answer within the timeout: 'timeout waiting for the answer'."""
        shared_proxy.add(Hang(5))
        error = failure(make(1.0, 0.3), shared_proxy.url)
        assert cause_of(error) == "timeout waiting for the answer"

    def test_a_connection_closed_without_an_answer(
        self, make: Any, shared_proxy: FaultProxy
    ) -> None:
        """The server closes the connection instead of answering: named as such."""
        shared_proxy.add(Reset())
        error = failure(make(1.0, 1.0), shared_proxy.url)
        assert cause_of(error) in ("connection closed before the answer", "connection reset")


def test_the_async_transport_names_the_cause_too() -> None:
    """AsyncClient's transport: a closed port is 'connection refused' as well."""

    async def post() -> TransportError:
        transport = AsyncHTTPXTransport(0.5, 0.5)
        with pytest.raises(TransportError) as failed:
            await transport.post(f"http://127.0.0.1:{free_port()}/events", b"[]", {})
        await transport.aclose()
        return failed.value

    assert cause_of(asyncio.run(post())) == "connection refused"


class TestCausesFromTheChain:
    """Failures a loopback test cannot make for real, built as the transports raise them."""

    def test_a_failed_dns_lookup(self) -> None:
        """httpx's ConnectError wrapping socket.gaierror: 'DNS lookup failed'."""
        try:
            try:
                raise socket.gaierror(-2, "Name or service not known")
            except socket.gaierror as exc:
                raise httpx.ConnectError(str(exc)) from exc
        except httpx.ConnectError as exc:
            error = TransportError(f"ConnectError: {exc}")
            error.__cause__ = exc
        assert cause_of(error) == "DNS lookup failed"

    def test_an_untrusted_certificate(self) -> None:
        """The TLS handshake refusing the server's certificate is named, not 'network error'."""
        error = NoConnection("SSLCertVerificationError: certificate verify failed")
        error.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")
        assert cause_of(error) == "TLS certificate not trusted"

    def test_a_connect_timeout_is_told_from_a_read_timeout(self) -> None:
        """A timeout while connecting is 'connect timeout'; once connected, the answer's."""
        connecting = NoConnection("TimeoutError: timed out")
        connecting.__cause__ = TimeoutError("timed out")
        reading = TransportError("TimeoutError: timed out")
        reading.__cause__ = TimeoutError("timed out")
        assert cause_of(connecting) == "connect timeout"
        assert cause_of(reading) == "timeout waiting for the answer"
        assert cause_of(TransportError("something else")) == "network error"
