"""Reading a request's body for POST /events, within the body limit and the worker's budget.

The announced size and encoding are checked before a byte of the body is read; the body is
refused the moment it passes the limit; gzip is inflated at most one byte past it. While a
request lasts, it holds its bytes against the worker's in-flight budget (past the budget of
requests or bytes: 503). Every refusal is a ``RequestRejected`` (413, 415, 400, 503).
"""

from __future__ import annotations

import zlib

from qlevents.server.responses import RequestRejected
from qlevents.server.types import Receive


class ClientDisconnected(Exception):
    """The client went away before sending its whole body."""


class BodyReader:
    """The body limit and the in-flight budget of one worker, and the reading under them."""

    def __init__(
        self, *, max_body_bytes: int, max_inflight_requests: int, max_inflight_bytes: int
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_inflight_requests = max_inflight_requests
        self.max_inflight_bytes = max_inflight_bytes
        self.inflight_requests = 0
        self.inflight_bytes = 0

    def admit(self) -> list[int]:
        """Count one more request in flight, or refuse with 503; returns what it holds (bytes,
        in a one-item list the reading adds to), to give back with ``release``."""
        if self.inflight_requests >= self.max_inflight_requests:
            raise _overloaded(f"{self.inflight_requests} requests are in progress")
        self.inflight_requests += 1
        return [0]

    def release(self, held: list[int]) -> None:
        self.inflight_requests -= 1
        self.inflight_bytes -= held[0]

    async def read(
        self, receive: Receive, length: bytes | None, encoding: bytes | None, held: list[int]
    ) -> bytes:
        """The body, inflated if gzipped, given its Content-Length and Content-Encoding."""
        gzipped = self._check_encoding(encoding)
        if length is not None and length.isdigit():
            if int(length) > self.max_body_bytes:
                raise self._too_large(int(length), compressed=gzipped)
            self._hold(held, int(length))
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            body = await self._receive_rest(receive, body)
        elif len(body) > self.max_body_bytes:
            raise self._too_large(len(body))
        if length is None:
            self._hold(held, len(body))
        if gzipped:
            body = self._gunzip(body)
            self._hold(held, len(body))
        return body

    def _hold(self, held: list[int], size: int) -> None:
        """Count ``size`` more bytes against the in-flight limit, or refuse with 503."""
        # A request alone is always let in, however large (the body limit bounds it).
        others = self.inflight_bytes - held[0]
        if others > 0 and self.inflight_bytes + size > self.max_inflight_bytes:
            raise _overloaded(f"{self.inflight_bytes} bytes of requests are in progress")
        self.inflight_bytes += size
        held[0] += size

    @staticmethod
    def _check_encoding(encoding: bytes | None) -> bool:
        if encoding is None or encoding in (b"", b"identity"):
            return False
        if encoding in (b"gzip", b"x-gzip"):
            return True
        raise RequestRejected(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding.decode('latin-1')!r} is not supported;"
            " send the body plain or with Content-Encoding: gzip.",
        )

    def check_size(self, size: int) -> None:
        """Refuse (413) a body of ``size`` bytes that is already in memory (the dashboard's)."""
        if size > self.max_body_bytes:
            raise self._too_large(size)

    def _too_large(self, size: int, *, compressed: bool = False) -> RequestRejected:
        what = "compressed body" if compressed else "body"
        return RequestRejected(
            413,
            "body_too_large",
            f"the request {what} has {size} bytes or more; the limit is {self.max_body_bytes}"
            " bytes (after decompression). Split the events over several requests.",
        )

    async def _receive_rest(self, receive: Receive, first: bytes) -> bytes:
        """The rest of a body that comes in several messages, after its ``first`` chunk."""
        chunks = [first]
        size = len(first)
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large(size)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _gunzip(self, body: bytes) -> bytes:
        # Inflate at most one byte past the limit: a gzip bomb is refused, never expanded.
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            plain = inflater.decompress(body, self.max_body_bytes + 1)
        except zlib.error as exc:
            raise RequestRejected(
                400, "invalid_gzip", f"the body is not valid gzip data: {exc}."
            ) from exc
        if len(plain) > self.max_body_bytes:
            raise self._too_large(len(plain))
        if not inflater.eof or inflater.unused_data:
            raise RequestRejected(
                400,
                "invalid_gzip",
                "the gzip body is truncated or holds more than one member; send one gzip member.",
            )
        return plain


def _overloaded(reason: str) -> RequestRejected:
    return RequestRejected(
        503,
        "overloaded",
        f"the server is at capacity ({reason}); nothing was stored, retry shortly.",
        [(b"retry-after", b"1")],
    )
