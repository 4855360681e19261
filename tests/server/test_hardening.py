"""Protection against slow, greedy and hostile clients: request deadlines (slowloris),
in-flight limits, per-account rate limits, the admin listener, CORS and log hygiene.

Tests that only send requests use the session's shared server, each under an account of its
own; the deadline tests share a server with short deadlines, the rate-limit tests one with a
small default quota; those that need a restart, the whole log or options of their own start
their own.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support import (
    ADMIN_TOKEN,
    RunningServer,
    free_port,
    get,
    metric,
    post,
    running_server,
    view,
)

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that gives headers and bodies 1 s each, for the module's deadline tests."""
    with running_server(
        tmp_path_factory.mktemp("deadlines"),
        "--header-timeout", "1", "--body-timeout", "1", "--admin-token", ADMIN_TOKEN,
    ) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def rate_limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose accounts may send a burst of 10 events and then ~none (0.01/s: no
    refill while a test runs), for the module's rate-limit tests, each on accounts of its
    own (a bucket is an account's)."""
    with running_server(
        tmp_path_factory.mktemp("rate-limited"),
        "--rate-limit", "0.01", "--rate-burst", "10", "--admin-token", ADMIN_TOKEN,
    ) as server:  # fmt: skip
        yield server


@contextmanager
def raw_connection(server: RunningServer) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    try:
        yield sock
    finally:
        sock.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the timeout)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


class TestRequestDeadlines:
    def test_slow_headers_are_cut_off_with_408(self, deadline_server: RunningServer) -> None:
        """A client that never finishes its headers gets a 408 and a closed connection."""
        with raw_connection(deadline_server) as sock:
            sock.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408 ")
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["errors"][0]["code"] == "request_timeout"
        assert "headers" in body["errors"][0]["message"]

    def test_silent_connection_is_closed(self, deadline_server: RunningServer) -> None:
        """A connection that sends nothing at all is closed after the header timeout."""
        with raw_connection(deadline_server) as sock:
            assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")

    def test_slow_body_is_cut_off_and_nothing_stored(self, deadline_server: RunningServer) -> None:
        """A body that stops arriving is cut off after the body timeout; nothing is stored."""
        server = deadline_server
        key = server.create_account("slow-body")
        mark = server.log_mark()
        body = json.dumps([view(key)]).encode()
        with raw_connection(server) as sock:
            sock.sendall(
                b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body[:10]
            )
            answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert server.stored(key) == []
        assert server.wait_for_log("timed out waiting for the body", since=mark)

    def test_normal_clients_are_served_beside_slow_ones(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """While 100 connections trickle headers, ordinary requests are answered."""
        server = shared_server
        slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
        try:
            for sock in slow:
                sock.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\n")
            with httpx.Client() as client:
                for _ in range(20):
                    answer = client.post(server.events_url, json=[view(account)])
                    assert answer.status_code == 200
        finally:
            for sock in slow:
                sock.close()
        assert len(server.stored(account)) == 20


class TestInflightLimit:
    def test_requests_past_the_limit_get_503_with_retry_after(
        self, serve: Callable[..., RunningServer]
    ) -> None:
        """With --max-inflight-requests 2 and two requests open, a third is refused."""
        server = serve("--max-inflight-requests", "2")
        body = json.dumps([view(server.client_key)]).encode()
        head = b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=15) for _ in range(2)]
        try:
            for sock in held:
                sock.sendall(head + body[:5])  # the app is now waiting for the rest
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                answer = server.post([view(server.client_key)])
                if answer.status_code == 503:
                    break
                time.sleep(0.05)
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["errors"][0]["code"] == "overloaded"
            for sock in held:
                sock.sendall(body[5:])
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in held:
                sock.close()
        assert server.post([view(server.client_key)]).status_code == 200


class TestRateLimits:
    def test_over_quota_key_gets_429_while_others_succeed(
        self, rate_limited_server: RunningServer
    ) -> None:
        """One key over its quota gets 429 + Retry-After; another key keeps 100% success."""
        server = rate_limited_server
        greedy = server.create_account("greedy")
        polite = server.create_account("polite")
        statuses = [server.post([view(greedy)] * 4).status_code for _ in range(5)]
        assert statuses[:2] == [200, 200] and 429 in statuses
        refused = server.post([view(greedy)] * 4)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["errors"][0]["code"] == "rate_limited"
        assert server.post([view(polite)] * 4).status_code == 200
        assert len(server.stored(greedy)) == 4 * statuses.count(200)

    def test_replayed_retries_cost_no_tokens(self, rate_limited_server: RunningServer) -> None:
        """A retry answered from the idempotency record stores nothing, so it spends nothing
        of the account's quota."""
        server = rate_limited_server
        key = server.create_account("replayed-retries")
        first = server.post([view(key)] * 4, headers={"Idempotency-Key": "order-1"})
        assert first.status_code == 200
        retry = server.post([view(key)] * 4, headers={"Idempotency-Key": "order-1"})
        assert retry.status_code == 200
        assert retry.headers["idempotent-replayed"] == "true"
        # 10 - 4 tokens left: 5 more events fit; had the retry paid, only 2 would.
        assert server.post([view(key)] * 5).status_code == 200
        assert server.post([view(key)] * 5).status_code == 429
        assert len(server.stored(key)) == 9

    def test_a_retry_is_answered_even_with_an_empty_bucket(
        self, rate_limited_server: RunningServer
    ) -> None:
        """The quota is spent: a new request gets 429, but a retry of a stored one gets its
        first answer (and a different body under the same key its 422)."""
        server = rate_limited_server
        key = server.create_account("empty-bucket")
        batch = [view(key)] * 10  # the whole burst
        first = server.post(batch, headers={"Idempotency-Key": "order-3"})
        assert first.status_code == 200
        assert server.post([view(key)], headers={"Idempotency-Key": "order-4"}).status_code == 429
        retry = server.post(batch, headers={"Idempotency-Key": "order-3"})
        assert retry.status_code == 200
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json() == first.json()
        other = server.post([view(key)] * 3, headers={"Idempotency-Key": "order-3"})
        assert other.status_code == 422
        assert other.json()["errors"][0]["code"] == "idempotency_key_reused"
        assert len(server.stored(key)) == 10

    def test_refused_and_replayed_requests_count_no_failed_events(
        self, rate_limited_server: RunningServer
    ) -> None:
        """qlevents_events_failed_total counts the events of answered requests once: not
        again for a replayed retry, not for a request refused with 429."""
        server = rate_limited_server
        key = server.create_account("failed-events-counted-once")
        before = get(f"{server.url}/metrics").text
        broken = view(key, price="12")
        batch = [broken, view(key), view(key)]
        for _ in range(2):
            answer = server.post(batch, headers={"Idempotency-Key": "order-2"})
            assert answer.status_code == 200
            assert answer.json()["errors"][0]["code"] == "invalid_type"
        assert server.post([broken, *[view(key)] * 9]).status_code == 429
        after = get(f"{server.url}/metrics").text

        def counted(name: str, labels: str = "") -> float:
            """What ``name`` counted during this test (the module's tests run one by one)."""
            return metric(after, name, labels) - metric(before, name, labels, default=0)

        assert counted("qlevents_events_failed_total", 'code="invalid_type"') == 1
        assert counted("qlevents_events_processed_total") == 2

    def test_per_account_limit_overrides_the_default(
        self, serve: Callable[..., RunningServer], tmp_path: Path
    ) -> None:
        """accounts limit KEY --rate sets one account's quota; others stay unlimited."""
        from qlevents.accounts import AccountBook
        from qlevents.cli import main

        data = tmp_path / "data"
        book = AccountBook(data)
        limited, unlimited = (book.add(name).client_key for name in ("limited", "unlimited"))
        book.close()
        assert main(["accounts", "limit", limited, "--rate", "1", "--burst", "2",
                     "--data-dir", str(data)]) == 0  # fmt: skip
        server = serve(data_dir=data)  # started once, on the book the command changed
        assert server.post([view(limited)] * 2).status_code == 200
        assert server.post([view(limited)]).status_code == 429
        for _ in range(5):
            assert server.post([view(unlimited)] * 50).status_code == 200

    def test_admin_api_sets_a_limit_that_applies_at_once(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """POST /admin/accounts/KEY/limit takes effect on the next request."""
        server, key = shared_server, account
        answer = post(
            f"{server.url}/admin/accounts/{key}/limit", json={"rate": 1, "burst": 1}, headers=AUTH
        )
        assert answer.json()["rate_limit"] == 1
        assert server.post([view(key)]).status_code == 200
        assert server.post([view(key)]).status_code == 429


class TestAdminListener:
    def test_admin_api_only_on_its_own_port(self, serve: Callable[..., RunningServer]) -> None:
        """With --admin-port the admin API answers there and nowhere else; /events not there."""
        admin_port = free_port()
        server = serve("--admin-token", ADMIN_TOKEN, "--admin-port", str(admin_port))
        admin_url = f"http://127.0.0.1:{admin_port}"
        assert httpx.get(f"{admin_url}/admin/accounts", headers=AUTH).status_code == 200
        assert httpx.get(f"{server.url}/admin/accounts", headers=AUTH).status_code == 404
        assert httpx.post(f"{admin_url}/events", json=[]).status_code == 404
        assert server.post([view(server.client_key)]).status_code == 200


class TestNoCors:
    def test_no_cors_headers_on_any_answer(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """The ingest endpoint is server-to-server: no Access-Control-* headers, no preflight."""
        origin = {"origin": "https://evil.example", "access-control-request-method": "POST"}
        preflight = httpx.options(shared_server.events_url, headers=origin)
        assert preflight.status_code == 405
        sent = shared_server.post([view(account)], headers={"origin": "https://evil.example"})
        for answer in (preflight, sent):
            assert not [h for h in answer.headers if h.lower().startswith("access-control-")]


class TestLogHygiene:
    def test_client_keys_never_reach_the_log(self, server: RunningServer) -> None:
        """Valid, unknown and disabled keys: none is ever written to the log."""
        key = server.client_key
        server.post([view(key), view("qlk_unknownkey123456789"), {"client_key": key}])
        server.post(b"[{" + key.encode())
        server.wait_for_log('"POST /events"', count=2)
        log = server.log()
        printed_at_start = log.count(key)  # the first-run banner prints the demo key, no more
        # its "client key:" line, the curl example, and the command adding a member of demo
        assert printed_at_start == 3
        assert "qlk_unknownkey123456789" not in log


class TestResponseWrites:
    def test_head_request_gets_its_head(self, shared_server: RunningServer) -> None:
        """A HEAD answer (a head with no body write) is still sent."""
        answer = httpx.head(f"{shared_server.url}/healthz")
        assert answer.status_code == 200 and answer.content == b""

    def test_expect_100_continue_is_answered_before_the_body(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """'100 Continue' goes out at once, not held back with the response's head."""
        body = json.dumps([view(account)]).encode()
        with raw_connection(shared_server) as sock:
            sock.sendall(
                b"POST /events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(body)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b'"processed":[{' in answer

    def test_connection_close_still_gets_the_whole_answer(
        self, shared_server: RunningServer
    ) -> None:
        """With Connection: close the head and body are sent before the connection closes."""
        with raw_connection(shared_server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b'{"status":"ok"}')
