"""Test helpers for integrators: assert what your code would have sent, without a network.

    from qlevents import Client
    from qlevents.testing import RecordingTransport

    transport = RecordingTransport()
    client = Client("test-key", "https://qlevents.test/events", transport=transport)
    client.view(product_id="p1", price=9.5, permalink="https://shop.example/p1")
    client.flush()
    assert transport.events[0]["product_id"] == "p1"

The transport answers as the server would: each event is checked with the server's own
rules, valid ones are "processed" (with an id), broken ones "failed" with their errors.
Pass ``handler`` to answer something else (a 503, a wrong_endpoint...).
"""

from __future__ import annotations

import gzip
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from qlevents.client._transport import Answer, AsyncTransport, Transport
from qlevents.events import ConversionEvent, ErrorEntry, EventsResponse, StoredEvent, ViewEvent
from qlevents.validation import decode_event, event_kind

_split: Final = msgspec.json.Decoder(list[msgspec.Raw]).decode
_decode: Final = msgspec.json.Decoder(dict[str, Any]).decode
_encode: Final = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One POST the client made."""

    url: str
    headers: Mapping[str, str]
    #: The JSON body, decompressed.
    body: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        return [_decode(raw) for raw in _split(self.body)]

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


Handler = Callable[[RecordedRequest], Answer | None]


class _Recorder:
    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event of every request, in the order sent (retries included)."""
        with self._lock:
            requests = list(self.requests)
        return [event for request in requests for event in request.events]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _answer(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = RecordedRequest(url, dict(headers), body)
        with self._lock:
            self.requests.append(request)
        if self.handler is not None:
            answer = self.handler(request)
            if answer is not None:
                return answer
        return Answer(200, _encode(self._process(body)), {"content-type": "application/json"})

    def _process(self, body: bytes) -> EventsResponse:
        response = EventsResponse(processed=[], failed=[], errors=[])
        received_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for index, raw in enumerate(_split(body)):
            result = decode_event(raw)
            if isinstance(result, ViewEvent | ConversionEvent):
                response.processed.append(
                    StoredEvent(
                        id=f"test-{next(self._ids)}",
                        received_at=received_at,
                        client_key=result.client_key,
                        event=event_kind(result),
                        product_id=result.product_id,
                        price=result.price,
                        units=getattr(result, "units", None),
                        vid=result.vid,
                        permalink=getattr(result, "permalink", None),
                        tags=result.tags,
                        channels=result.channels,
                    )
                )
            else:
                response.failed.append(raw)
                response.errors.extend(
                    ErrorEntry(index, p.field, p.code, p.message) for p in result
                )
        return response


class RecordingTransport(_Recorder, Transport):
    """A :class:`~qlevents.Transport` that records requests and answers like the server."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        return self._answer(url, body, headers)


class AsyncRecordingTransport(_Recorder, AsyncTransport):
    """The same for :class:`~qlevents.AsyncClient`."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        return self._answer(url, body, headers)


def answer(status: int, errors: list[ErrorEntry] | None = None, **headers: str) -> Answer:
    """An answer for a ``handler``: ``answer(503, retry_after="1")``."""
    body = _encode(EventsResponse(errors=errors or []))
    return Answer(status, body, {k.replace("_", "-"): v for k, v in headers.items()})


__all__ = ["AsyncRecordingTransport", "Handler", "RecordedRequest", "RecordingTransport", "answer"]
