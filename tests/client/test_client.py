"""Client and AsyncClient: events built and checked at the call site, queued, sent in batches,
stored. Tests marked ``@both_clients`` run with each (see conftest.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qlevents import (
    ClientClosedError,
    ClientError,
    EventValidationError,
    TransportError,
)
from qlevents.events import ErrorEntry
from qlevents.testing import RecordingTransport, answer
from tests.client.conftest import both_clients, eventually, product_ids
from tests.support import RunningServer, conversion, free_port, view

MakeClient = Callable[..., Any]
#: An endpoint nothing listens on; the tests that use it record instead of sending.
NOWHERE = "http://127.0.0.1:9/events"


class TestEventsReachTheStore:
    @both_clients
    def test_view_is_stored_as_given(
        self, shared_server: RunningServer, account: str, make_client: MakeClient
    ) -> None:
        """view() with every field lands in the store with those fields."""
        client = make_client(account, shared_server.events_url)
        client.view(
            product_id="123-AA-X23",
            price=123.41,
            permalink="https://yourstore.com/123-AA-X23/",
            vid="DASDAS-#CCCC-NA",
            tags=["user:new"],
            channels=["online"],
        )
        assert client.flush(20)
        [stored] = shared_server.stored(account)
        assert stored["event"] == "view" and stored["product_id"] == "123-AA-X23"
        assert stored["price"] == 123.41 and stored["vid"] == "DASDAS-#CCCC-NA"
        assert stored["tags"] == ["user:new"] and stored["channels"] == ["online"]

    @both_clients
    def test_conversion_total_is_decimal_exact(
        self, shared_server: RunningServer, account: str, make_client: MakeClient
    ) -> None:
        """unit_price=10.1, units=3 stores price 30.3 (not 30.299999999999997) and units 3."""
        client = make_client(account, shared_server.events_url)
        client.conversion(product_id="p", unit_price=10.1, units=3)
        client.conversion(product_id="q", price=60)
        assert client.flush(20)
        stored = {e["product_id"]: e for e in shared_server.stored(account)}
        assert stored["p"]["price"] == 30.3 and stored["p"]["units"] == 3
        assert stored["q"]["price"] == 60.0 and stored["q"]["units"] is None

    def test_many_views_are_stored_exactly_once(
        self, shared_server: RunningServer, account: str, make_client: MakeClient
    ) -> None:
        """2,000 views from 4 threads: every one stored, none twice."""
        import threading

        client = make_client(account, shared_server.events_url, max_batch_events=200)

        def produce(offset: int) -> None:
            for i in range(500):
                client.view(product_id=f"p{offset + i}", price=1, permalink="https://s.example/")

        threads = [threading.Thread(target=produce, args=(n * 500,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert client.flush(30)
        assert product_ids(shared_server.stored(account)) == sorted(f"p{i}" for i in range(2000))
        stats = client.stats()
        assert stats["enqueued"] == stats["handed_to_network"] == stats["stored"] == 2000
        assert stats["dropped"] == stats["refused"] == stats["pending"] == 0


@both_clients
class TestLocalValidation:
    @pytest.mark.parametrize(
        ("price", "unit_price", "says"),
        [(10.0, 5.0, "both"), (None, None, "neither")],
    )
    def test_price_xor_unit_price(
        self, price: float | None, unit_price: float | None, says: str, make_client: MakeClient
    ) -> None:
        """Giving both or neither of price and unit_price is a clear error at the call site."""
        with make_client("k", NOWHERE, transport=RecordingTransport()) as client:
            with pytest.raises(EventValidationError, match=f"exactly one of price.*got {says}"):
                client.conversion(product_id="p", price=price, unit_price=unit_price, units=2)
            assert client.stats()["enqueued"] == 0

    def test_broken_event_raises_with_every_problem_and_is_never_sent(
        self, make_client: MakeClient
    ) -> None:
        """The server's rules run at the call site: all problems named, nothing queued."""
        transport = RecordingTransport()
        with make_client("k", NOWHERE, transport=transport) as client:
            with pytest.raises(EventValidationError) as caught:
                client.view(product_id="", price=-1, permalink="not a url")
            assert {p.field for p in caught.value.problems} == {"product_id", "price", "permalink"}
            assert {p.code for p in caught.value.problems} == {
                "empty_value", "out_of_range", "invalid_url",
            }  # fmt: skip
            assert client.flush(5)
        assert transport.requests == []

    @pytest.mark.parametrize("permalink", ["/relative", "https://s.example/p\n", "http://a b"])
    def test_a_permalink_that_is_no_url_alone_is_refused(
        self, permalink: str, make_client: MakeClient
    ) -> None:
        """The URL form is checked apart from the struct types: alone, it is still caught."""
        client = make_client("k", NOWHERE, transport=RecordingTransport())
        with client, pytest.raises(EventValidationError) as caught:
            client.view(product_id="p", price=1, permalink=permalink)
        assert [(p.field, p.code) for p in caught.value.problems] == [("permalink", "invalid_url")]

    def test_text_that_is_not_unicode_is_refused(self, make_client: MakeClient) -> None:
        """A lone surrogate in a str cannot be sent as JSON: a validation error, not a crash."""
        client = make_client("k", NOWHERE, transport=RecordingTransport())
        with client, pytest.raises(EventValidationError, match="not valid Unicode"):
            client.view(product_id="p\ud800", price=1, permalink="https://s.example/")

    def test_conversion_with_two_channels_is_refused(self, make_client: MakeClient) -> None:
        """The spec's one-channel rule for conversions applies locally too."""
        client = make_client("k", NOWHERE, transport=RecordingTransport())
        with client, pytest.raises(EventValidationError, match="at most one item"):
            client.conversion(product_id="p", price=1, channels=["a", "b"])

    def test_group_names_the_position_of_a_broken_event(self, make_client: MakeClient) -> None:
        """enqueue() refuses the whole group and says which event is broken."""
        client = make_client("k", NOWHERE, transport=RecordingTransport())
        with client, pytest.raises(EventValidationError, match="event 1: price"):
            client.enqueue([conversion("k"), conversion("k", price="free")])

    def test_empty_client_key_is_refused(self, make_client: MakeClient) -> None:
        """A client without a key is a mistake caught at construction."""
        with pytest.raises(ClientError, match="client_key"):
            make_client("", NOWHERE)

    def test_bad_option_is_refused(self, make_client: MakeClient) -> None:
        """Options outside the server's limits are refused at construction."""
        with pytest.raises(ClientError, match="max_batch_events"):
            make_client("k", NOWHERE, max_batch_events=5000)


@both_clients
class TestGroups:
    def test_events_given_together_travel_in_one_request(self, make_client: MakeClient) -> None:
        """A checkout's conversions given to enqueue() are never split over requests."""
        transport = RecordingTransport()
        with make_client("k", NOWHERE, transport=transport, max_batch_events=3) as client:
            client.view(product_id="v", price=1, permalink="https://s.example/")
            client.enqueue([conversion("k", product_id=f"c{i}") for i in range(3)])
            client.view(product_id="w", price=1, permalink="https://s.example/")
            assert client.flush(10)
        batches = [[e["product_id"] for e in r.events] for r in transport.requests]
        assert ["c0", "c1", "c2"] in batches

    def test_batches_close_on_count(self, make_client: MakeClient) -> None:
        """35 events with max_batch_events=10 go in 4 requests, in order."""
        transport = RecordingTransport()
        with make_client(
            "k", NOWHERE, transport=transport, max_batch_events=10, flush_interval=60
        ) as client:
            for i in range(35):
                client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
            assert client.flush(10)
        assert [len(r.events) for r in transport.requests] == [10, 10, 10, 5]
        assert [e["product_id"] for e in transport.events] == [f"p{i}" for i in range(35)]

    def test_batches_close_on_bytes(self, make_client: MakeClient) -> None:
        """Batches stay under max_batch_bytes."""
        transport = RecordingTransport()
        with make_client("k", NOWHERE, transport=transport, max_batch_bytes=2048) as client:
            for i in range(40):
                client.view(product_id=f"p{i}", price=1, permalink="https://s.example/" + "x" * 50)
            assert client.flush(10)
        assert len(transport.requests) > 1
        assert all(len(r.body) <= 2048 for r in transport.requests)
        assert len(transport.events) == 40


@both_clients
class TestSend:
    def test_send_returns_the_servers_answer(
        self, shared_server: RunningServer, account: str, make_client: MakeClient
    ) -> None:
        """send() posts now, in one request, and returns processed / failed / errors."""
        client = make_client(account, shared_server.events_url)
        result = client.send([view(account), conversion("qlk_unknown_key")])
        assert len(result.processed) == 1 and not result.ok
        assert result.failed == [conversion("qlk_unknown_key")]
        assert [(e.index, e.code) for e in result.errors] == [(1, "unknown_client_key")]
        assert len(shared_server.stored(account)) == 1
        assert shared_server.stored("qlk_unknown_key") == []

    def test_send_fills_in_the_client_key(
        self, shared_server: RunningServer, account: str, make_client: MakeClient
    ) -> None:
        """Events given to send() without a client_key get the client's."""
        client = make_client(account, shared_server.events_url)
        event = view(account)
        del event["client_key"]
        assert client.send([event]).ok
        [stored] = shared_server.stored(account)
        assert stored["client_key"] == account

    def test_send_raises_when_the_server_is_unreachable(self, make_client: MakeClient) -> None:
        """No answer within send_retry_budget: TransportError, not a hang."""
        client = make_client("k", f"http://127.0.0.1:{free_port()}/events", send_retry_budget=0.3)
        with pytest.raises(TransportError, match="not delivered"):
            client.send([view("k")])

    def test_nothing_to_send_sends_nothing(self, make_client: MakeClient) -> None:
        """send([]) answers an empty result without a request."""
        transport = RecordingTransport()
        client = make_client("k", NOWHERE, transport=transport)
        result = client.send([])
        assert result.ok and result.processed == [] and transport.requests == []

    def test_more_than_one_request_can_hold_is_refused(self, make_client: MakeClient) -> None:
        """A group over the server's limit of 1000 events is refused before sending."""
        client = make_client("k", NOWHERE)
        with pytest.raises(ClientError, match="one request"):
            client.send([view("k")] * 1001)


@both_clients
class TestLifecycle:
    def test_closed_client_refuses_events(self, make_client: MakeClient) -> None:
        """After close(), view() raises ClientClosedError."""
        client = make_client("k", NOWHERE, transport=RecordingTransport())
        client.close()
        client.close()  # twice is fine
        with pytest.raises(ClientClosedError):
            client.view(product_id="p", price=1, permalink="https://s.example/")
        with pytest.raises(ClientClosedError):
            client.send([view("k")])

    def test_flush_times_out_and_says_what_is_pending(
        self, make_client: MakeClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With the server down, flush(timeout) is false, says 3 are pending, and logs it."""
        client = make_client("k", f"http://127.0.0.1:{free_port()}/events")
        for i in range(3):
            client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
        result = client.flush(0.5)
        assert not result
        assert (result.stored, result.refused, result.dropped, result.pending) == (0, 0, 0, 3)
        assert "3 events still pending" in caplog.text
        client.close(timeout=0.2)

    def test_close_is_bounded_and_counts_what_it_drops(
        self, make_client: MakeClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        """close(timeout) with the server down returns, counting undelivered events dropped."""
        failures: list[str] = []
        client = make_client(
            "k",
            f"http://127.0.0.1:{free_port()}/events",
            on_failure=lambda event, errors: failures.append(errors[0].code),
        )
        client.view(product_id="p", price=1, permalink="https://s.example/")
        client.close(timeout=0.5)
        assert client.stats()["dropped"] == 1
        assert failures == ["not_delivered"]


@both_clients
class TestSenderSurvives:
    def test_an_on_failure_that_raises_is_logged(
        self, make_client: MakeClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A broken on_failure callback: logged with its traceback; the sender carries on."""

        def on_failure(event: object, errors: object) -> None:
            raise RuntimeError("the callback is broken")

        refused = [answer(400, [ErrorEntry(None, None, "refused", "no.")])]
        transport = RecordingTransport(lambda request: refused.pop() if refused else None)
        client = make_client("k", NOWHERE, transport=transport, on_failure=on_failure)
        client.view(product_id="refused", price=1, permalink="https://s.example/")
        assert client.flush(10).refused == 1
        client.view(product_id="after", price=1, permalink="https://s.example/")
        assert client.flush(10)
        assert "the on_failure callback raised" in caplog.text
        assert [e["product_id"] for e in transport.events][-1] == "after"

    def test_a_fault_in_the_sender_loses_only_its_batch(
        self, make_client: MakeClient, caplog: pytest.LogCaptureFixture, monkeypatch: Any
    ) -> None:
        """An exception delivering one batch: it is dropped and counted; the next is sent."""
        from qlevents.client import _sender

        faults = [RuntimeError("injected")]
        real = _sender.Delivery

        def delivery(*args: Any, **kwargs: Any) -> Any:
            if faults:
                raise faults.pop()
            return real(*args, **kwargs)

        monkeypatch.setattr(_sender, "Delivery", delivery)
        transport = RecordingTransport()
        client = make_client("k", NOWHERE, transport=transport)
        client.enqueue([view("k", product_id="lost"), view("k", product_id="lost")])
        lost = client.flush(10)
        assert not lost and lost.dropped == 2 and lost.reasons == {"not_delivered": 2}
        client.view(product_id="sent", price=1, permalink="https://s.example/")
        assert client.flush(10)
        assert "the sender failed on a batch of 2 events" in caplog.text
        assert client.stats()["dropped"] == 2
        assert [e["product_id"] for e in transport.events] == ["sent"]

    def test_a_fault_reading_the_queue_is_retried(
        self, make_client: MakeClient, caplog: pytest.LogCaptureFixture, monkeypatch: Any
    ) -> None:
        """The queue failing once under the sender: logged, and it tries again."""
        from qlevents.client._queue import EventQueue

        faults = [OSError("injected")]
        real = EventQueue.poll

        def poll(self: EventQueue) -> Any:
            if faults:
                raise faults.pop()
            return real(self)

        monkeypatch.setattr(EventQueue, "poll", poll)
        transport = RecordingTransport()
        client = make_client("k", NOWHERE, transport=transport)
        client.view(product_id="p", price=1, permalink="https://s.example/")
        assert client.flush(10)
        assert "the sender could not read its queue" in caplog.text
        assert [e["product_id"] for e in transport.events] == ["p"]


@both_clients
class TestFullQueue:
    def test_full_queue_drops_counts_and_warns_once(
        self, server: RunningServer, make_client: MakeClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Server down, queue of 10: 40 of 50 dropped and counted, one warning; 10 stored;
        the flush says so."""
        server.stop()
        client = make_client(server.client_key, server.events_url, max_queue_size=10)
        with caplog.at_level(logging.WARNING, "qlevents.client"):
            for i in range(50):
                client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
        assert client.stats()["dropped"] == client.stats()["dropped_queue_full"] == 40
        assert sum("the queue is full" in r.message for r in caplog.records) == 1
        server.start()
        result = client.flush(30)
        assert not result
        assert (result.stored, result.dropped, result.pending) == (10, 40, 0)
        assert result.reasons == {"queue_full": 40}
        assert product_ids(server.stored()) == sorted(f"p{i}" for i in range(10))


@both_clients
class TestLogging:
    def test_every_call_is_logged_with_its_timings(
        self,
        shared_server: RunningServer,
        account: str,
        make_client: MakeClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Each POST logs batch size, bytes, status, seconds and processed/failed counts."""
        client = make_client(account, shared_server.events_url)
        with caplog.at_level(logging.INFO, "qlevents.client"):
            client.enqueue([view(account), view("qlk_nobody")])
            assert client.flush(20).stored == 1
        [call] = [r for r in caplog.records if r.message.startswith("POST")]
        assert call.levelno == logging.WARNING  # one event failed
        assert "2 events" in call.message and "bytes" in call.message
        assert "status 200 in" in call.message and "1 processed, 1 failed" in call.message

    def test_refused_event_goes_to_on_failure_and_the_log(
        self,
        shared_server: RunningServer,
        make_client: MakeClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A permanent failure reaches on_failure with the server's errors, and a WARNING."""
        failures: list[tuple[dict[str, object], list[str]]] = []
        client = make_client(
            "qlk_nobody",
            shared_server.events_url,
            on_failure=lambda event, errors: failures.append((event, [e.code for e in errors])),
        )
        client.view(product_id="p", price=1, permalink="https://s.example/")
        result = client.flush(20)
        assert not result and result.refused == 1
        eventually(lambda: failures, what="on_failure")
        [(event, codes)] = failures
        assert event["product_id"] == "p" and codes == ["unknown_client_key"]
        assert "1 events not stored: unknown_client_key (the first: view 'p': " in caplog.text
        assert client.stats()["refused"] == 1


class TestDefaultTransport:
    def test_stdlib_transport_without_a_proxy(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no proxy configured, Client posts through the light http.client transport."""
        from qlevents.client import HTTPTransport
        from qlevents.client._transport import default_transport

        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        transport = default_transport("https://evt.example/events", 1, 2)
        assert isinstance(transport, HTTPTransport)
        transport.close()

    def test_httpx_transport_when_a_proxy_is_configured(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """HTTPS_PROXY set: the client falls back to httpx, which honours proxies."""
        from qlevents.client import HTTPXTransport
        from qlevents.client._transport import default_transport

        monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
        monkeypatch.setenv("no_proxy", "")
        transport = default_transport("https://evt.example/events", 1, 2)
        assert isinstance(transport, HTTPXTransport)
        transport.close()


@both_clients
class TestFlushTellsTheTruth:
    def test_everything_stored_is_true_and_counted(
        self, shared_server: RunningServer, account: str, make_client: MakeClient
    ) -> None:
        """All stored: the result is true and counts them; a flush with nothing new is too."""
        client = make_client(account, shared_server.events_url)
        for i in range(3):
            client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
        result = client.flush(20)
        assert result
        assert (result.stored, result.refused, result.dropped, result.pending) == (3, 0, 0, 0)
        again = client.flush(20)
        assert again and again.stored == 0

    def test_a_wrong_client_key_is_refused_not_true(
        self,
        shared_server: RunningServer,
        make_client: MakeClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Answered 200 with every event failed (unknown_client_key): false, counted, one
        log line for the three events."""
        client = make_client("qlk_wrong", shared_server.events_url)
        with caplog.at_level(logging.WARNING, "qlevents.client"):
            for i in range(3):
                client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
            result = client.flush(20)
        assert not result
        assert (result.stored, result.refused, result.dropped) == (0, 3, 0)
        assert result.reasons == {"unknown_client_key": 3}
        assert sum("events not stored" in r.message for r in caplog.records) == 1
        assert shared_server.stored("qlk_wrong") == []

    def test_an_endpoint_missing_events_is_refused_not_true(
        self,
        shared_server: RunningServer,
        account: str,
        make_client: MakeClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A URL the server answers 404: false, the events refused, the log says what to fix."""
        wrong = shared_server.events_url.removesuffix("/events") + "/api"
        client = make_client(account, wrong)
        for i in range(3):
            client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
        result = client.flush(20)
        assert not result
        assert (result.stored, result.refused, result.reasons) == (0, 3, {"not_found": 3})
        assert f"is {wrong} the /events URL of your qlevents server?" in caplog.text
        assert shared_server.stored(account) == []

    def test_each_flush_reports_what_happened_since_the_previous(
        self, shared_server: RunningServer, account: str, make_client: MakeClient
    ) -> None:
        """A refusal is reported by the flush after it, not again by the next one."""
        client = make_client(account, shared_server.events_url)
        client.enqueue([view(account), view("qlk_wrong")])
        first = client.flush(20)
        assert (bool(first), first.stored, first.refused) == (False, 1, 1)
        client.view(product_id="later", price=1, permalink="https://s.example/")
        second = client.flush(20)
        assert (bool(second), second.stored, second.refused) == (True, 1, 0)

    def test_with_a_spool_a_refusal_is_reported_too(
        self, shared_server: RunningServer, make_client: MakeClient, tmp_path: Path
    ) -> None:
        """Spooled events refused by the server: the flush counts them refused as well."""
        client = make_client("qlk_wrong", shared_server.events_url, spool_dir=tmp_path / "spool")
        for i in range(3):
            client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
        result = client.flush(20)
        assert not result and result.refused == 3 and result.pending == 0
        assert result.reasons == {"unknown_client_key": 3}


@both_clients
class TestStats:
    def test_stats_tell_the_network_from_the_store_and_tries_from_requests(
        self, make_client: MakeClient
    ) -> None:
        """A closed port: events handed to the network, none stored, all dropped; the
        failed connection attempts are network errors, not requests."""
        client = make_client("k", f"http://127.0.0.1:{free_port()}/events", retry_budget=0.3)
        for i in range(3):
            client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
        assert client.flush(20).dropped == 3
        stats = client.stats()
        assert stats["handed_to_network"] == 3 and stats["stored"] == 0
        assert stats["dropped"] == stats["dropped_undelivered"] == 3
        assert stats["requests"] == 0 and stats["network_errors"] >= 2
        assert stats["retried"] == stats["network_errors"] - 1
