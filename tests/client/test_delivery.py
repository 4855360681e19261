"""The delivery core, driven by hand: each answer the server may give, and what it decides.

No network and no clock: a test plays the server (``Answer`` values) and the transport
(exceptions), and checks the request the delivery hands out next and how long it would wait.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable

import msgspec
import pytest

from qlevents import TransportError
from qlevents.client._build import Encoded, as_dict, view
from qlevents.client._config import Options
from qlevents.client._delivery import (
    NOT_DELIVERED,
    WRONG_ENDPOINT,
    Delivery,
    Request,
    Stats,
    retry_after,
)
from qlevents.client._transport import Answer
from qlevents.events import ErrorEntry, EventsResponse, StoredEvent
from qlevents.testing import RecordingTransport, answer

URL = "https://evt.example/events"
HOME = "https://evt-eu.example/events"
KEY = "qle-test-key"
QUICK = Options(backoff_base=0.01, backoff_cap=0.05, gzip_min_bytes=None)


def events(count: int) -> list[Encoded]:
    return [view("k", f"p{i}", 1, "https://s.example/") for i in range(count)]


def delivery(
    count: int = 3,
    groups: list[int] | None = None,
    *,
    options: Options = QUICK,
    budget: float = 30.0,
    clock: Callable[[], float] | None = None,
) -> Delivery:
    extra = {} if clock is None else {"clock": clock}
    return Delivery(
        events(count),
        groups or [1] * count,
        key=KEY,
        endpoint=URL,
        options=options,
        budget=budget,
        stats=Stats(),
        **extra,
    )


def server(request: Request) -> Answer:
    """The answer the real server would give (the recording transport checks every event)."""
    return RecordingTransport().post(request.url, request.body, request.headers)


def stored(product_id: str) -> StoredEvent:
    return StoredEvent(
        id=f"id-{product_id}",
        received_at="2024-05-01T00:00:00Z",
        client_key="k",
        event="view",
        product_id=product_id,
        price=1.0,
    )


def answer_200(processed: list[StoredEvent], errors: list[ErrorEntry] | None = None) -> Answer:
    body = msgspec.json.encode(EventsResponse(processed=processed, errors=errors or []))
    return Answer(200, body)


def product_ids(request: Request) -> list[str]:
    return [as_dict(event)["product_id"] for event in request.events]


class TestAnswered:
    def test_a_200_processes_every_event(self) -> None:
        """One request for the batch; the server's 200 settles it; nothing left to send."""
        sending = delivery(3)
        request = sending.next()
        assert request is not None and request.url == URL
        assert request.headers["idempotency-key"] == KEY
        assert sending.answered(request, server(request)) is None
        assert sending.next() is None
        result = sending.result()
        assert result.ok and [e.product_id for e in result.processed] == ["p0", "p1", "p2"]
        assert sending.stats.snapshot()["requests"] == 1

    def test_refused_events_fail_at_their_own_index(self) -> None:
        """A 200 with an error at index 1: that event fails, with the server's error."""
        sending = delivery(3)
        request = sending.next()
        assert request is not None
        error = ErrorEntry(1, "price", "out_of_range", "too low")
        sending.answered(request, answer_200([stored("p0"), stored("p2")], [error]))
        result = sending.result()
        assert [e["product_id"] for e in result.failed] == ["p1"]
        assert result.errors == [error] and not result.ok

    def test_an_answer_that_misses_events_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """A 200 that accounts for fewer events than were sent: the server broke its contract."""
        sending = delivery(2)
        request = sending.next()
        assert request is not None
        out_of_range = ErrorEntry(7, None, "invalid_value", "no such event")
        assert sending.answered(request, answer_200([], [out_of_range])) is None
        assert "accounts for 0 of 2 events" in caplog.text
        assert sending.failures == []

    def test_the_background_sender_reads_counts_only(self) -> None:
        """With keep_processed=False the stored events are counted, not decoded."""
        sending = Delivery(
            events(2), [1, 1], key=KEY, endpoint=URL, options=QUICK, budget=1,
            keep_processed=False,
        )  # fmt: skip
        request = sending.next()
        assert request is not None
        sending.answered(request, server(request))
        assert len(sending.processed) == 2
        assert all(isinstance(raw, msgspec.Raw) for raw in sending.processed)


class TestRetries:
    @pytest.mark.parametrize("status", [408, 425, 429, 500, 503, 599])
    def test_retryable_statuses_are_sent_again_with_the_same_key_and_body(
        self, status: int
    ) -> None:
        """408, 425, 429 and 5xx: the same request again (same key, same bytes) after a backoff."""
        sending = delivery(2)
        first = sending.next()
        assert first is not None
        body = first.body
        delay = sending.answered(first, answer(status))
        assert delay is not None and 0 <= delay <= QUICK.backoff_base * 2
        again = sending.next()
        assert again is first and again.body == body and again.headers["idempotency-key"] == KEY
        assert sending.answered(again, server(again)) is None
        assert sending.result().ok
        assert sending.stats.snapshot()["retried"] == 1

    def test_no_answer_is_retried(self) -> None:
        """A network error or timeout (TransportError): the same request again."""
        sending = delivery(1)
        request = sending.next()
        assert request is not None
        assert sending.failed(request, TransportError("ReadTimeout: timed out")) is not None
        assert sending.next() is request

    def test_a_broken_transport_is_logged_and_retried(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A custom transport raising anything else: logged with its traceback, retried."""
        sending = delivery(1)
        request = sending.next()
        assert request is not None
        assert sending.failed(request, ValueError("boom")) is not None
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "the transport raised ValueError" in record.message and record.exc_info

    def test_retry_after_is_honoured_up_to_its_cap(self) -> None:
        """Retry-After: 3 waits 3 s (not the backoff); 999 s is cut to retry_after_cap."""
        sending = delivery(1, options=Options(backoff_base=0.01, backoff_cap=0.05))
        request = sending.next()
        assert request is not None
        assert sending.answered(request, answer(429, retry_after="3")) == 3.0
        capped = delivery(1, options=Options(backoff_cap=0.05, retry_after_cap=5))
        request = capped.next()
        assert request is not None
        assert capped.answered(request, answer(503, retry_after="999")) == 5.0

    def test_a_200_that_is_not_the_apis_answer_is_retried(self) -> None:
        """A 200 whose body is not an events answer (a proxy's page) is not trusted."""
        sending = delivery(1)
        request = sending.next()
        assert request is not None
        assert sending.answered(request, Answer(200, b"<html>maintenance</html>")) is not None
        assert sending.next() is request and not sending.answered_any

    def test_past_the_budget_the_events_are_not_delivered(self) -> None:
        """Once a retry would end past the budget, the events are given up, with the reason."""
        now = [0.0]
        sending = delivery(2, budget=1.0, clock=lambda: now[0])
        request = sending.next()
        assert request is not None
        assert sending.answered(request, answer(503)) is not None
        now[0] = 5.0
        assert sending.answered(request, answer(503)) is None
        assert sending.next() is None
        assert sending.undelivered == [0, 1]
        assert "gave up after 2 tries" in sending.reason
        result = sending.result()
        assert [e.code for e in result.errors] == [NOT_DELIVERED, NOT_DELIVERED]
        assert [e.index for e in result.errors] == [0, 1]
        assert [e["product_id"] for e in result.failed] == ["p0", "p1"]

    def test_give_up_leaves_what_was_not_answered_undelivered(self) -> None:
        """give_up() (the client closing) settles every request still to send."""
        sending = delivery(3)
        sending.give_up()
        assert sending.next() is None
        assert sending.undelivered == [0, 1, 2]
        assert [f[1][0].code for f in sending.not_delivered()] == [NOT_DELIVERED] * 3


class TestRefused:
    def test_a_4xx_refuses_every_event_with_the_servers_errors(self) -> None:
        """A 400 is final: every event fails with the request's errors, reported once."""
        sending = delivery(2)
        request = sending.next()
        assert request is not None
        error = ErrorEntry(None, None, "invalid_json", "the body is not JSON")
        assert sending.answered(request, answer(400, [error])) is None
        assert sending.next() is None and sending.answered_any
        assert [origin for origin, _ in sending.failures] == [0, 1]
        result = sending.result()
        assert result.errors == [error] and len(result.failed) == 2

    def test_a_4xx_without_the_apis_body_is_named_by_its_status(self) -> None:
        """A 401 from a proxy (no JSON): the events fail with the code http_401."""
        sending = delivery(1)
        request = sending.next()
        assert request is not None
        sending.answered(request, Answer(401, b"Unauthorized"))
        [(_, [error])] = sending.failures
        assert error.code == "http_401"


class TestCompression:
    def test_bodies_from_the_threshold_are_gzipped(self) -> None:
        """gzip_min_bytes=0: the body is gzip, and decompresses to the plain JSON array."""
        sending = delivery(2, options=Options(gzip_min_bytes=0))
        request = sending.next()
        assert request is not None
        assert request.headers["content-encoding"] == "gzip"
        assert gzip.decompress(request.body) == request.plain
        assert request.plain.startswith(b"[") and request.plain.endswith(b"]")

    def test_a_415_to_a_gzip_body_is_resent_plain(self) -> None:
        """A server that takes no gzip answers 415: the same request is sent uncompressed."""
        sending = delivery(2, options=Options(gzip_min_bytes=0))
        request = sending.next()
        assert request is not None
        assert sending.answered(request, answer(415)) == 0.0
        again = sending.next()
        assert again is not None
        assert "content-encoding" not in again.headers
        assert again.body == again.plain and again.headers["idempotency-key"] == KEY
        assert sending.answered(again, server(again)) is None
        assert sending.result().ok

    def test_a_415_to_a_plain_body_is_final(self) -> None:
        """Already plain: a 415 refuses the events (http_415)."""
        sending = delivery(1)
        request = sending.next()
        assert request is not None
        assert sending.answered(request, answer(415)) is None
        assert sending.next() is None
        assert sending.result().errors[0].code == "http_415"


class TestSplit:
    def test_a_413_splits_between_groups_with_derived_keys(self) -> None:
        """413 (the server's limits are lower): two halves, groups whole, keys K-a and K-b."""
        sending = delivery(4, groups=[2, 1, 1])
        request = sending.next()
        assert request is not None
        assert sending.answered(request, answer(413)) is None
        first = sending.next()
        assert first is not None
        assert product_ids(first) == ["p0", "p1"] and first.key == f"{KEY}-a"
        sending.answered(first, server(first))
        second = sending.next()
        assert second is not None
        assert product_ids(second) == ["p2", "p3"] and second.key == f"{KEY}-b"
        refused = ErrorEntry(0, "price", "out_of_range", "too low")
        sending.answered(second, answer_200([stored("p3")], [refused]))
        assert sending.next() is None
        # The second half's event 0 is the batch's event 2.
        [(origin, [error])] = sending.failures
        assert origin == 2 and error.index == 2

    def test_a_413_of_one_group_is_final(self) -> None:
        """A single group cannot be split: it fails (http_413)."""
        sending = delivery(3, groups=[3])
        request = sending.next()
        assert request is not None
        sending.answered(request, answer(413))
        assert sending.next() is None
        assert {errors[0].code for _, errors in sending.failures} == {"http_413"}


class TestWrongEndpoint:
    def moved(self, index: int, endpoint: str = HOME) -> ErrorEntry:
        return ErrorEntry(index, None, WRONG_ENDPOINT, "homed elsewhere", endpoint=endpoint)

    def test_events_homed_elsewhere_are_resent_there(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """wrong_endpoint for event 1: it alone goes to the endpoint named, with a warning."""
        sending = delivery(2)
        request = sending.next()
        assert request is not None
        sending.answered(request, answer_200([stored("p0")], [self.moved(1)]))
        redirect = sending.next()
        assert redirect is not None
        assert redirect.url == HOME and product_ids(redirect) == ["p1"]
        assert redirect.key.startswith(f"{KEY}-moved-") and redirect.redirected
        assert sending.answered(redirect, server(redirect)) is None
        assert sending.result().ok and len(sending.processed) == 2
        assert f"homed on {HOME}" in caplog.text

    def test_a_second_move_is_a_failure(self) -> None:
        """Sent where the server said and told to move again: the event fails, no loop."""
        sending = delivery(1)
        request = sending.next()
        assert request is not None
        sending.answered(request, answer_200([], [self.moved(0)]))
        redirect = sending.next()
        assert redirect is not None
        sending.answered(redirect, answer_200([], [self.moved(0, URL)]))
        assert sending.next() is None
        assert sending.result().errors[0].code == WRONG_ENDPOINT

    def test_a_move_to_the_same_endpoint_is_a_failure(self) -> None:
        """wrong_endpoint naming the URL it was sent to: nothing to resend."""
        sending = delivery(1)
        request = sending.next()
        assert request is not None
        sending.answered(request, answer_200([], [self.moved(0, URL)]))
        assert sending.next() is None
        assert [origin for origin, _ in sending.failures] == [0]


class TestRetryAfterHeader:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("2", 2.0),
            ("0.5", 0.5),
            ("-3", 0.0),
            ("Wed, 01 May 2024 00:00:30 GMT", 30.0),
            ("Wed, 01 May 2024 00:00:00 GMT", 0.0),
            ("soon", None),
            ("inf", None),
            ("nan", None),
            ("", None),
            (None, None),
        ],
    )
    def test_seconds_or_an_http_date(self, value: str | None, seconds: float | None) -> None:
        """Retry-After in seconds or as an HTTP date (from now); nonsense is ignored."""
        now = 1714521600.0  # 2024-05-01T00:00:00Z
        assert retry_after(value, now) == seconds
