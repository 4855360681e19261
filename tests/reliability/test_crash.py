"""kill -9 under concurrent load, a few cycles (reliability/crash_cycles.py runs many):
nothing acknowledged is lost, the database stays intact, and duplicates come only from
clients that retried without an Idempotency-Key; and a retry after a lost answer."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from reliability.crash_cycles import Run, run_cycles

from tests.support import RunningServer, running_server, view


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Three kill -9 / restart cycles under four clients (two with idempotency keys)."""
    with running_server(tmp_path_factory.mktemp("crash")) as server:
        yield run_cycles(
            server, cycles=3, clients=4, seed=20261127, min_up=0.3, max_up=1.2, pause=0.02
        )


class TestKillNineUnderLoad:
    def test_every_acknowledged_event_is_stored(self, crashed: Run) -> None:
        """After each restart, every id a 200 listed as processed is in the store."""
        assert [c.lost for c in crashed.checks] == [0, 0, 0]
        assert crashed.final.lost == 0
        assert crashed.final.acknowledged > 0

    def test_database_passes_integrity_check(self, crashed: Run) -> None:
        """PRAGMA integrity_check is ok after every crash."""
        assert [c.integrity for c in crashed.checks] == ["ok", "ok", "ok"]

    def test_clients_with_idempotency_keys_store_no_duplicates(self, crashed: Run) -> None:
        """Clients that retried with their Idempotency-Key after connection errors: no
        event of theirs is stored twice."""
        assert crashed.ledger.retries_with_key > 0
        assert crashed.final.duplicates_with_key == 0

    def test_duplicates_come_only_from_retries_without_a_key(self, crashed: Run) -> None:
        """Any event stored twice was re-sent, without a key, by its client."""
        assert crashed.final.bad_duplicates == 0

    def test_every_batch_was_eventually_answered(self, crashed: Run) -> None:
        """Each client's batches all ended in a 200: none given up, no other answer."""
        assert crashed.ledger.gave_up == 0 and crashed.ledger.unexpected == []


def send_and_hang_up(server: RunningServer, body: bytes, headers: dict[str, str]) -> None:
    """Send a whole POST /events, then close the connection without reading the answer."""
    lines = ["POST /events HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)


def stored_with(server: RunningServer, key: str, product_id: str) -> list[dict[str, Any]]:
    return [e for e in server.stored(key) if e["product_id"] == product_id]


def wait_until_stored(
    server: RunningServer, key: str, product_id: str, count: int
) -> list[dict[str, Any]]:
    """The stored events with ``product_id`` once there are ``count`` of them (at most 10 s)."""
    deadline = time.monotonic() + 10
    while len(found := stored_with(server, key, product_id)) < count:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return found


class TestRetryAfterALostAnswer:
    def test_retry_with_the_same_key_replays_and_stores_nothing_more(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """The answer is lost after the server stored the batch; the retry with the same
        Idempotency-Key gets the first answer (the same ids) and stores no duplicate."""
        server = shared_server
        body = json.dumps([view(account, product_id="lost-answer")]).encode()
        headers = {"content-type": "application/json", "idempotency-key": "lost-1"}
        send_and_hang_up(server, body, headers)
        [first] = wait_until_stored(server, account, "lost-answer", 1)
        retry = server.post(body, headers=headers)
        assert retry.status_code == 200
        assert retry.headers["idempotent-replayed"] == "true"
        assert [e["id"] for e in retry.json()["processed"]] == [first["id"]]
        assert len(stored_with(server, account, "lost-answer")) == 1

    def test_retry_without_a_key_stores_the_batch_twice(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """Without a key the server cannot tell a retry from a new batch: a duplicate (why
        clients should send Idempotency-Key)."""
        server = shared_server
        body = json.dumps([view(account, product_id="no-key")]).encode()
        send_and_hang_up(server, body, {"content-type": "application/json"})
        wait_until_stored(server, account, "no-key", 1)
        assert server.post(body).status_code == 200
        assert len(stored_with(server, account, "no-key")) == 2
