"""POST /events against a real server: the spec's examples, the response contract, the
status codes, gzip, limits, idempotency and the account checks.

Tests that only send requests use the session's shared server, each under an account of its
own; those of the limits share a server with small ones; those that restart or kill a server
start their own.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    RunningServer,
    conversion,
    post,
    running_server,
    view,
)

#: The body limit of ``limited_server``: a gzip bomb of 50 MB of spaces compresses below it.
BODY_LIMIT = 100_000


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with small limits (10 events, ``BODY_LIMIT`` bytes) for the module's tests
    of limits, each under an account of its own."""
    with running_server(
        tmp_path_factory.mktemp("limited"),
        "--max-events", "10", "--max-body-bytes", str(BODY_LIMIT), "--admin-token", ADMIN_TOKEN,
    ) as server:  # fmt: skip
        yield server


def assert_contract(body: dict[str, Any], sent: list[Any]) -> None:
    """Every input event is in exactly one of processed / failed, failed in request order."""
    assert set(body) == {"processed", "failed", "errors"}
    assert len(body["processed"]) + len(body["failed"]) == len(sent)
    failed_indexes = sorted({e["index"] for e in body["errors"]})
    assert [sent[i] for i in failed_indexes] == body["failed"]


class TestSpecExamples:
    def test_single_view_is_processed_and_stored(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """The spec's product-page curl example is processed and lands in the store."""
        answer = shared_server.post([view(account)])
        assert answer.status_code == 200
        body = answer.json()
        assert body["failed"] == [] and body["errors"] == []
        [event] = body["processed"]
        assert event["product_id"] == "123-AA-X23" and event["price"] == 123.41
        assert event["id"] and event["received_at"].endswith("Z")
        assert shared_server.stored(account) == body["processed"]

    def test_form_encoded_content_type_is_parsed_as_json(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """curl -d sends application/x-www-form-urlencoded; the body is JSON all the same."""
        key = account
        body = f'[{{"client_key": "{key}", "price": 60, "product_id": "p", "event": "conversion"}}]'
        answer = shared_server.post(
            body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert answer.status_code == 200
        assert len(answer.json()["processed"]) == 1

    def test_two_conversions_with_units(self, shared_server: RunningServer, account: str) -> None:
        """The payment-page example: two conversions, the second with units 3, price as float."""
        key = account
        answer = shared_server.post([conversion(key, price=123.41, units=None), conversion(key)])
        processed = answer.json()["processed"]
        assert [e["units"] for e in processed] == [None, 3]
        assert processed[1]["price"] == 60.0 and isinstance(processed[1]["price"], float)
        assert len(shared_server.stored(key)) == 2


class TestResponseContract:
    def test_mixed_batch_splits_into_processed_and_failed(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """Good events are stored, broken ones are returned as sent with one error per problem."""
        key = account
        sent = [
            view(key),
            {"event": "view", "price": "12", "client_key": key},
            conversion(key),
            5,
            conversion(key, units=0, channels=["a", "b"]),
        ]
        body = shared_server.post(sent).json()
        assert_contract(body, sent)
        assert len(body["processed"]) == 2
        assert [(e["index"], e["field"], e["code"]) for e in body["errors"]] == [
            (1, "price", "invalid_type"),
            (1, "product_id", "missing_field"),
            (1, "permalink", "missing_field"),
            (3, None, "not_an_object"),
            (4, "channels", "too_many_items"),
            (4, "units", "out_of_range"),
        ]
        assert all(e["message"].endswith(".") for e in body["errors"])
        assert len(shared_server.stored(key)) == 2

    def test_failed_events_are_returned_byte_for_byte(self, shared_server: RunningServer) -> None:
        """A failed event comes back exactly as sent: key order, spacing inside values kept."""
        raw = b'[{"price": 1.50, "event":"view", "zz": [1, 2]}]'
        body = shared_server.post(raw).content
        assert b'"failed":[{"price": 1.50, "event":"view", "zz": [1, 2]}]' in body

    def test_bare_object_is_a_batch_of_one(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """A single event object (not in an array) is taken as a batch of one."""
        body = shared_server.post(view(account)).json()
        assert len(body["processed"]) == 1

    def test_empty_array_is_an_empty_batch(self, shared_server: RunningServer) -> None:
        """[] answers 200 with three empty lists."""
        answer = shared_server.post(b"[]")
        assert answer.status_code == 200
        assert answer.json() == {"processed": [], "failed": [], "errors": []}

    def test_processed_events_are_normalised(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """Stored events carry defaults: tags/channels [], vid null, price a float."""
        key = account
        event = {"client_key": key, "event": "conversion", "price": 7, "product_id": "p"}
        [stored] = shared_server.post([event]).json()["processed"]
        assert stored["tags"] == [] and stored["channels"] == [] and stored["vid"] is None
        assert stored["price"] == 7.0 and stored["permalink"] is None

    def test_ids_are_unique_and_events_keep_request_order(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """Each processed event has its own id; processed keeps the request's order."""
        key = account
        sent = [view(key, product_id=f"p{i}") for i in range(50)]
        processed = shared_server.post(sent).json()["processed"]
        assert [e["product_id"] for e in processed] == [f"p{i}" for i in range(50)]
        assert len({e["id"] for e in processed}) == 50


class TestWholeRequestErrors:
    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b"", "invalid_json"),
            (b"not json", "invalid_json"),
            (b"[1,", "invalid_json"),
            (b'"a string"', "not_an_array"),
            (b"42", "not_an_array"),
            (b"null", "not_an_array"),
            (b'{"a": NaN}', "invalid_json"),
            (b'"\xff"', "invalid_json"),
            (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        ],
    )
    def test_bad_bodies_are_400_in_the_contract_shape(
        self, shared_server: RunningServer, body: bytes, code: str
    ) -> None:
        """A body that is not a JSON array or object is a 400 with an index-null error."""
        answer = shared_server.post(body)
        assert answer.status_code == 400
        payload = answer.json()
        assert payload["processed"] == [] and payload["failed"] == []
        [error] = payload["errors"]
        assert error["index"] is None and error["code"] == code

    def test_too_many_events_is_413_naming_the_limit(self, limited_server: RunningServer) -> None:
        """Over the event limit: 413, the message names the limit and what was sent."""
        server = limited_server
        key = server.create_account("too-many-events")
        answer = server.post([view(key)] * 11)
        assert answer.status_code == 413
        [error] = answer.json()["errors"]
        assert error["code"] == "too_many_events"
        assert "11 events" in error["message"] and "limit is 10" in error["message"]
        assert server.stored(key) == []

    def test_body_over_the_limit_is_413(self, limited_server: RunningServer) -> None:
        """A body over the size limit is refused with 413, by Content-Length or streamed."""
        server = limited_server
        key = server.create_account("body-over-the-limit")
        big = json.dumps([view(key)] * 500).encode()
        assert len(big) > BODY_LIMIT
        answer = server.post(big)
        assert answer.status_code == 413
        assert answer.json()["errors"][0]["code"] == "body_too_large"
        assert f"limit is {BODY_LIMIT} bytes" in answer.json()["errors"][0]["message"]

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        streamed = post(server.events_url, content=chunks())
        assert streamed.status_code == 413
        assert server.stored(key) == []

    def test_body_exactly_at_the_limit_is_taken(self, limited_server: RunningServer) -> None:
        """The limit is inclusive: a body of exactly max bytes is processed."""
        server = limited_server
        body = json.dumps([view(server.create_account("body-at-the-limit"))]).encode()
        body = body[:-1] + b" " * (BODY_LIMIT - len(body)) + b"]"
        assert len(body) == BODY_LIMIT
        assert server.post(body).status_code == 200

    def test_other_methods_are_405_with_allow(self, shared_server: RunningServer) -> None:
        """GET/PUT/DELETE on /events: 405, Allow: POST, in the contract's shape."""
        for method in ("GET", "PUT", "DELETE"):
            answer = httpx.request(method, shared_server.events_url)
            assert answer.status_code == 405
            assert answer.headers["allow"] == "POST"
            assert answer.json()["errors"][0]["code"] == "method_not_allowed"

    def test_unknown_path_is_404_in_the_contract_shape(self, shared_server: RunningServer) -> None:
        """Anything else is a 404 that still has the spec's three fields."""
        answer = post(f"{shared_server.url}/event")
        assert answer.status_code == 404
        assert answer.json()["errors"][0]["code"] == "not_found"


class TestGzip:
    def test_gzip_body_is_accepted(self, shared_server: RunningServer, account: str) -> None:
        """Content-Encoding: gzip bodies are inflated and processed."""
        body = gzip.compress(json.dumps([view(account)] * 3).encode())
        answer = shared_server.post(body, headers={"content-encoding": "gzip"})
        assert answer.status_code == 200
        assert len(answer.json()["processed"]) == 3

    def test_gzip_bomb_is_refused_without_inflating_it(self, limited_server: RunningServer) -> None:
        """A small gzip body that inflates past the limit is a 413."""
        bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]")
        assert len(bomb) < BODY_LIMIT
        answer = limited_server.post(bomb, headers={"content-encoding": "gzip"})
        assert answer.status_code == 413
        assert answer.json()["errors"][0]["code"] == "body_too_large"

    def test_broken_gzip_is_400(self, shared_server: RunningServer) -> None:
        """Bytes that are not gzip, or a truncated stream, are a 400 invalid_gzip."""
        whole = gzip.compress(b"[]" * 1000)
        for body in (b"not gzip at all", whole[: len(whole) // 2]):
            answer = shared_server.post(body, headers={"content-encoding": "gzip"})
            assert answer.status_code == 400
            assert answer.json()["errors"][0]["code"] == "invalid_gzip"

    def test_other_encodings_are_415(self, shared_server: RunningServer) -> None:
        """deflate, br, or a chain of encodings: 415 unsupported_encoding."""
        for encoding in ("br", "deflate", "gzip, gzip"):
            answer = shared_server.post(
                zlib.compress(b"[]"), headers={"content-encoding": encoding}
            )
            assert answer.status_code == 415
            assert answer.json()["errors"][0]["code"] == "unsupported_encoding"


class TestIdempotency:
    def test_retry_with_the_same_key_replays_and_stores_nothing(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """The same key and body: the first answer again, marked replayed; stored once."""
        sent = [view(account), {"event": "view"}]
        headers = {"idempotency-key": "batch-0001"}
        first = shared_server.post(sent, headers=headers)
        again = shared_server.post(sent, headers=headers)
        assert again.status_code == 200
        assert again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert len(shared_server.stored(account)) == 1

    def test_same_key_with_another_body_is_422(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """Reusing a key for a different request is refused, and nothing is stored."""
        key = account
        shared_server.post([view(key)], headers={"idempotency-key": "k-1"})
        answer = shared_server.post([view(key, price=1)], headers={"idempotency-key": "k-1"})
        assert answer.status_code == 422
        assert answer.json()["errors"][0]["code"] == "idempotency_key_reused"
        assert len(shared_server.stored(key)) == 1

    def test_keys_are_per_account(self, shared_server: RunningServer, account: str) -> None:
        """Two accounts may use the same key without colliding."""
        other = shared_server.create_account("other")
        headers = {"idempotency-key": "shared"}
        shared_server.post([view(account)], headers=headers)
        answer = shared_server.post([view(other)], headers=headers)
        assert "idempotent-replayed" not in answer.headers
        assert len(shared_server.stored(account)) + len(shared_server.stored(other)) == 2

    def test_invalid_key_is_400(self, shared_server: RunningServer, account: str) -> None:
        """An over-long key is refused with 400 invalid_idempotency_key."""
        answer = shared_server.post([view(account)], headers={"idempotency-key": "x" * 300})
        assert answer.status_code == 400
        assert answer.json()["errors"][0]["code"] == "invalid_idempotency_key"

    def test_replay_survives_a_restart(self, server: RunningServer) -> None:
        """The key is remembered durably: a retry after a crash still replays."""
        sent = [view(server.client_key)]
        first = server.post(sent, headers={"idempotency-key": "durable"})
        server.kill()
        server.start()
        again = server.post(sent, headers={"idempotency-key": "durable"})
        assert again.content == first.content
        assert len(server.stored()) == 1


class TestAccounts:
    def test_unknown_key_fails_the_event(self, shared_server: RunningServer) -> None:
        """An event with a key no account has fails with unknown_client_key."""
        body = shared_server.post([view("qlk_nobody")]).json()
        assert [e["code"] for e in body["errors"]] == ["unknown_client_key"]
        assert body["errors"][0]["field"] == "client_key"

    def test_disabled_account_fails_with_its_own_code(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """A disabled account's events fail with disabled_client_key."""
        url = f"{shared_server.url}/admin/accounts/{account}/disable"
        assert post(url, headers=ADMIN_HEADERS).status_code == 200
        assert [e["code"] for e in shared_server.post([view(account)]).json()["errors"]] == [
            "disabled_client_key"
        ]

    def test_wrong_endpoint_names_the_right_one(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """A key homed elsewhere fails with wrong_endpoint and the URL to re-send to."""
        home = "https://evt-eu.example.com/events"
        url = f"{shared_server.url}/admin/accounts/{account}/move"
        assert post(url, json={"endpoint": home}, headers=ADMIN_HEADERS).status_code == 200
        [error] = shared_server.post([view(account)]).json()["errors"]
        assert error["code"] == "wrong_endpoint"
        assert error["endpoint"] == "https://evt-eu.example.com/events"
        assert "https://evt-eu.example.com/events" in error["message"]
        assert shared_server.stored(account) == []

    def test_account_error_is_reported_beside_field_errors(
        self, shared_server: RunningServer
    ) -> None:
        """An event with an unknown key and a bad price reports both problems."""
        body = shared_server.post([view("qlk_nobody", price=-1)]).json()
        assert [e["code"] for e in body["errors"]] == ["out_of_range", "unknown_client_key"]

    def test_new_account_is_seen_without_restart(self, shared_server: RunningServer) -> None:
        """An account added from the CLI while the server runs is accepted within seconds."""
        import time

        key = shared_server.add_account("late")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if shared_server.post([view(key)]).json()["processed"]:
                break
            time.sleep(0.2)
        assert len(shared_server.stored(key)) == 1


class TestDurability:
    def test_processed_events_survive_sigkill(self, server: RunningServer) -> None:
        """What a 200 listed as processed is in the store after kill -9 and a restart."""
        key = server.client_key
        processed = []
        for i in range(20):
            processed += server.post([view(key, product_id=f"p{i}")] * 5).json()["processed"]
        server.kill()
        server.start()
        assert {e["id"] for e in server.stored()} == {e["id"] for e in processed}
