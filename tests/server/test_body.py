"""Reading a body within the body limit and the worker's in-flight budget, in process.
(The same refusals over real HTTP: test_events_api.py, test_hostile_input.py.)"""

from __future__ import annotations

import gzip
from typing import Any

import pytest

from qlevents.server.body import BodyReader, ClientDisconnected
from qlevents.server.responses import RequestRejected

pytestmark = pytest.mark.anyio

LIMIT = 1000


class Chunks:
    """An ASGI ``receive`` handing out the given body chunks, counting the calls."""

    def __init__(self, *chunks: bytes, disconnect: bool = False) -> None:
        self.messages: list[dict[str, Any]] = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]
        if disconnect:
            self.messages[-1]["more_body"] = True
            self.messages.append({"type": "http.disconnect"})
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return self.messages.pop(0)


def reader(**limits: int) -> BodyReader:
    options = {"max_body_bytes": LIMIT, "max_inflight_requests": 10, "max_inflight_bytes": 10_000}
    return BodyReader(**{**options, **limits})


async def refused(
    bodies: BodyReader, receive: Chunks, length: bytes | None = None, encoding: bytes | None = None
) -> RequestRejected:
    with pytest.raises(RequestRejected) as caught:
        await bodies.read(receive, length, encoding, bodies.admit())
    return caught.value


class TestLimit:
    async def test_announced_oversize_is_refused_before_reading(self) -> None:
        """A Content-Length over the limit is a 413 before a byte is received."""
        receive = Chunks(b"x" * 2000)
        rejected = await refused(reader(), receive, length=b"2000")
        assert (rejected.status, rejected.code) == (413, "body_too_large")
        assert "the request body has 2000 bytes or more" in rejected.message
        assert receive.calls == 0

    async def test_streamed_body_is_refused_as_it_passes_the_limit(self) -> None:
        """Without a length, chunks are counted and the one that passes the limit ends it."""
        receive = Chunks(b"x" * 600, b"x" * 600, b"x" * 600)
        rejected = await refused(reader(), receive)
        assert rejected.status == 413 and receive.calls == 2

    async def test_exactly_the_limit_is_read(self) -> None:
        """The limit is inclusive."""
        bodies = reader()
        body = await bodies.read(Chunks(b"x" * 500, b"y" * 500), None, None, bodies.admit())
        assert body == b"x" * 500 + b"y" * 500

    async def test_disconnect_midway_is_reported(self) -> None:
        """A client gone before the end of its body raises ClientDisconnected."""
        bodies = reader()
        with pytest.raises(ClientDisconnected):
            await bodies.read(Chunks(b"[", disconnect=True), None, None, bodies.admit())


class TestEncoding:
    async def test_gzip_is_inflated(self) -> None:
        """gzip (and x-gzip) bodies come out plain."""
        bodies = reader()
        for encoding in (b"gzip", b"x-gzip"):
            packed = gzip.compress(b"[1, 2]")
            body = await bodies.read(Chunks(packed), None, encoding, bodies.admit())
            assert body == b"[1, 2]"

    async def test_bomb_is_refused_without_inflating_it(self) -> None:
        """A gzip body inflating past the limit is a 413."""
        rejected = await refused(reader(), Chunks(gzip.compress(b" " * 1_000_000)), None, b"gzip")
        assert rejected.status == 413

    @pytest.mark.parametrize(
        "packed",
        [b"not gzip", gzip.compress(b"[]")[:-4], gzip.compress(b"[]") * 2],
        ids=["not-gzip", "truncated", "two-members"],
    )
    async def test_broken_gzip_is_400(self, packed: bytes) -> None:
        """Not gzip, truncated, or more than one member: 400 invalid_gzip."""
        rejected = await refused(reader(), Chunks(packed), None, b"gzip")
        assert (rejected.status, rejected.code) == (400, "invalid_gzip")

    async def test_other_encodings_are_415(self) -> None:
        """Anything but identity and gzip is refused before reading."""
        receive = Chunks(b"[]")
        rejected = await refused(reader(), receive, None, b"br")
        assert (rejected.status, rejected.code) == (415, "unsupported_encoding")
        assert receive.calls == 0


class TestInflightBudget:
    async def test_requests_past_the_budget_are_503(self) -> None:
        """Past max_inflight_requests a request is refused until one is released."""
        bodies = reader(max_inflight_requests=2)
        first, _ = bodies.admit(), bodies.admit()
        with pytest.raises(RequestRejected) as caught:
            bodies.admit()
        assert (caught.value.status, caught.value.code) == (503, "overloaded")
        assert caught.value.headers == [(b"retry-after", b"1")]
        bodies.release(first)
        bodies.admit()

    async def test_bytes_past_the_budget_are_503_unless_alone(self) -> None:
        """A request alone may hold more than the byte budget; a second one then may not."""
        bodies = reader(max_inflight_bytes=100)
        alone = bodies.admit()
        await bodies.read(Chunks(b"x" * 500), b"500", None, alone)
        second = bodies.admit()
        with pytest.raises(RequestRejected) as caught:
            await bodies.read(Chunks(b"x" * 10), b"10", None, second)
        assert caught.value.code == "overloaded"
        bodies.release(second)
        bodies.release(alone)
        assert (bodies.inflight_requests, bodies.inflight_bytes) == (0, 0)
