"""qlevents.testing: integrators assert what their code would have sent."""

from __future__ import annotations

from qlevents import Answer, Client
from qlevents.testing import RecordedRequest, RecordingTransport, answer


class TestRecordingTransport:
    def test_records_what_would_have_been_sent(self) -> None:
        """The events, their request and its Idempotency-Key are all there to assert on."""
        transport = RecordingTransport()
        with Client("test-key", "https://evt.example/events", transport=transport) as client:
            client.view(product_id="p1", price=9.5, permalink="https://shop.example/p1")
            client.conversion(product_id="p1", unit_price=10.1, units=3)
            assert client.flush(5)
            assert client.stats()["stored"] == 2
        [request] = transport.requests
        assert request.url == "https://evt.example/events"
        assert request.idempotency_key
        assert [(e["event"], e["price"]) for e in transport.events] == [
            ("view", 9.5), ("conversion", 30.3),
        ]  # fmt: skip

    def test_answers_like_the_server(self) -> None:
        """Events the server would refuse come back failed, with the server's error codes."""
        with Client("test-key", "https://evt.example/events", transport=RecordingTransport()) as c:
            result = c.send([{"event": "view", "product_id": "p", "price": 1,
                              "permalink": "https://s.example/"}])  # fmt: skip
        assert result.ok and result.processed[0].id.startswith("test-")

    def test_handler_injects_answers(self) -> None:
        """A handler can answer a 503 first: the client retries with the same key."""
        calls: list[RecordedRequest] = []

        def handler(request: RecordedRequest) -> Answer | None:
            calls.append(request)
            return answer(503, retry_after="0") if len(calls) == 1 else None

        transport = RecordingTransport(handler)
        with Client("k", "https://evt.example/events", transport=transport, backoff_base=0.01) as c:
            c.view(product_id="p", price=1, permalink="https://s.example/")
            assert c.flush(5)
        assert len(calls) == 2 and calls[0].idempotency_key == calls[1].idempotency_key
