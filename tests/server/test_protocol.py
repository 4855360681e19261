"""The connection protocol's lingering close: a client that sends its whole body before it
reads (Python's urllib, without ``Expect: 100-continue``) reads a refusal sent before the end
of its body, and a body that never ends is read only so far."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import httpx
import pytest

from tests.support import RunningServer

MIB = 1024 * 1024


class TestLingeringClose:
    def test_urllib_reads_the_413_of_a_6_mib_body(self, server: RunningServer) -> None:
        """urllib (Connection: close, no 100-continue) gets the 413 in the contract's shape, not a
        connection reset."""
        body = b"[" + b" " * (6 * MIB) + b"]"
        request = urllib.request.Request(
            server.events_url, data=body, headers={"content-type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        with refused.value as answered:
            assert answered.code == 413
            answer = json.loads(answered.read())
        assert answer["errors"][0]["code"] == "body_too_large"
        assert httpx.get(f"{server.url}/healthz").status_code == 200

    def test_urllib_reads_the_413_of_a_body_refused_while_streamed(
        self, server: RunningServer
    ) -> None:
        """A chunked body (no Content-Length) refused once it passed the limit: urllib still
        reads the 413."""
        chunks = (b" " * 65536 for _ in range(6 * 16))  # 6 MiB, sent chunked
        request = urllib.request.Request(server.events_url, data=chunks, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        with refused.value as answered:
            assert answered.code == 413

    def test_a_body_that_never_ends_is_read_only_so_far(self, server: RunningServer) -> None:
        """After the answer the server discards a bounded part of the body, then closes: a
        client announcing 1 GiB is cut off long before it sent it."""
        announced = 1024 * MIB
        sent = 0
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n" % announced
            )
            piece = b" " * 65536
            with pytest.raises(OSError):  # reset or broken pipe, once the server closed
                while sent < announced:
                    sock.sendall(piece)
                    sent += len(piece)
        assert sent < 64 * MIB
        assert httpx.get(f"{server.url}/healthz").status_code == 200
