"""The background sender under faults: every event stored exactly once, on the real server.

Tests marked ``@both_clients`` run with Client's thread and with AsyncClient's task.

Faults the real server cannot make on demand (slow answers, 429, 5xx, resets) come from a
proxy in front of it (tests/client/faults.py); crashes and restarts are the real server's.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qlevents import Client
from qlevents.accounts import AccountBook
from tests.client.conftest import both_clients, eventually, product_ids
from tests.client.faults import CloseAfter, FaultProxy, Hang, Reset, Slow, Status
from tests.support import RunningServer, free_port

MakeClient = Callable[..., Any]


def resends(proxy: FaultProxy) -> int:
    """How many requests the proxy saw sent again, each with its first try's key and
    body. The client may cut the events into more than one batch (it takes what is queued
    when it wakes): each batch keeps its own key through its retries."""
    bodies: dict[str | None, set[bytes]] = {}
    for seen in proxy.seen:
        bodies.setdefault(seen.key, set()).add(seen.body)
    assert None not in bodies, "a request without an Idempotency-Key"
    assert all(len(sent) == 1 for sent in bodies.values()), "a key sent with another body"
    return len(proxy.seen) - len(bodies)


def views(client: Any, count: int, prefix: str = "p") -> list[str]:
    ids = [f"{prefix}{i}" for i in range(count)]
    for product_id in ids:
        client.view(product_id=product_id, price=1.5, permalink="https://s.example/")
    return sorted(ids)


@both_clients
class TestServerOutages:
    def test_server_down_then_up(self, server: RunningServer, make_client: MakeClient) -> None:
        """Events queued while the server is down are stored once it is back."""
        server.stop()
        client = make_client(server.client_key, server.events_url)
        sent = views(client, 20)
        eventually(lambda: client.stats()["retried"] >= 2, what="retries while down")
        server.start()
        assert client.flush(30)
        assert product_ids(server.stored()) == sent

    def test_server_killed_mid_batch(self, server: RunningServer, make_client: MakeClient) -> None:
        """SIGKILL and restart during steady traffic: every event stored exactly once."""
        client = make_client(server.client_key, server.events_url, max_batch_events=50)
        done = threading.Event()
        sent: list[str] = []

        def produce() -> None:
            for i in range(3000):
                client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
                sent.append(f"p{i}")
                if i % 50 == 0:
                    time.sleep(0.002)
            done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        eventually(lambda: client.stats()["stored"] >= 300, what="traffic to flow")
        server.kill()
        time.sleep(0.3)
        server.start()
        producer.join()
        assert client.flush(60)
        stored = product_ids(server.stored())
        assert len(stored) == len(set(stored)), "an event was stored twice"
        assert stored == sorted(sent)
        assert client.stats()["dropped"] == 0


class TestRetries:
    @both_clients
    def test_slow_server_past_the_timeout_is_retried_with_the_same_key(
        self,
        shared_server: RunningServer,
        account: str,
        shared_proxy: FaultProxy,
        make_client: MakeClient,
    ) -> None:
        """The answer comes too late; the retry carries the same key; stored once."""
        shared_proxy.add(Slow(2.0))
        client = make_client(account, shared_proxy.url, timeout=0.5)
        sent = views(client, 10)
        assert client.flush(30)
        assert resends(shared_proxy) >= 1
        assert product_ids(shared_server.stored(account)) == sent
        assert client.stats()["retried"] >= 1

    @both_clients
    def test_429_with_retry_after_is_honoured(
        self,
        shared_server: RunningServer,
        account: str,
        shared_proxy: FaultProxy,
        make_client: MakeClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A 429 with Retry-After: 1 is waited out (not the 0.05 s backoff); stored once."""
        shared_proxy.add(Status(429, retry_after="1"))
        client = make_client(account, shared_proxy.url)
        sent = views(client, 5)
        assert client.flush(30)
        [retry] = [r.message for r in caplog.records if "status 429" in r.message]
        assert float(retry.rsplit("retrying in ", 1)[1].split()[0]) >= 1.0
        assert resends(shared_proxy) == 1
        assert product_ids(shared_server.stored(account)) == sent

    @pytest.mark.parametrize(
        ("flavour", "status"),
        [("Client", 500), ("Client", 502), ("Client", 503), ("Client", 504), ("AsyncClient", 503)],
        indirect=["flavour"],
    )
    def test_5xx_is_retried(
        self,
        status: int,
        shared_server: RunningServer,
        account: str,
        shared_proxy: FaultProxy,
        make_client: MakeClient,
    ) -> None:
        """5xx answers are retried with the same Idempotency-Key until stored, once."""
        shared_proxy.add(Status(status), Status(status, retry_after="0"), Reset())
        client = make_client(account, shared_proxy.url)
        sent = views(client, 7)
        assert client.flush(30)
        assert resends(shared_proxy) == 3
        assert product_ids(shared_server.stored(account)) == sent
        assert client.stats()["retried"] == 3

    @both_clients
    def test_answer_lost_after_store_is_not_stored_twice(
        self,
        shared_server: RunningServer,
        account: str,
        shared_proxy: FaultProxy,
        make_client: MakeClient,
    ) -> None:
        """The server stored the batch but the answer never came: the retry is a replay."""
        shared_proxy.add(Hang(1.0))
        client = make_client(account, shared_proxy.url, timeout=0.5)
        sent = views(client, 10)
        assert client.flush(30)
        assert resends(shared_proxy) >= 1
        assert product_ids(shared_server.stored(account)) == sent

    @both_clients
    def test_retry_budget_gives_up_and_reports(
        self,
        shared_server: RunningServer,
        account: str,
        shared_proxy: FaultProxy,
        make_client: MakeClient,
    ) -> None:
        """Past retry_budget the batch is dropped, counted and given to on_failure."""
        shared_proxy.add(*[Status(503)] * 100)
        failures: list[str] = []
        client = make_client(
            account,
            shared_proxy.url,
            retry_budget=0.3,
            on_failure=lambda event, errors: failures.append(errors[0].code),
        )
        views(client, 3)
        result = client.flush(30)
        assert not result and result.dropped == 3 and result.reasons == {"not_delivered": 3}
        assert failures == ["not_delivered"] * 3
        assert client.stats()["dropped"] == client.stats()["dropped_undelivered"] == 3
        assert shared_server.stored(account) == []


class TestWrongEndpoint:
    @pytest.fixture
    def moved(
        self, serve: Callable[..., RunningServer]
    ) -> tuple[RunningServer, RunningServer, str]:
        """An account homed on ``home``; ``old`` knows it moved there."""
        old, home = serve(), serve()
        key = old.add_account("moved")
        with sqlite3.connect(home.data_dir / "accounts.sqlite3") as conn:
            conn.execute("ATTACH DATABASE ? AS old", (str(old.data_dir / "accounts.sqlite3"),))
            conn.execute(
                "INSERT INTO accounts SELECT * FROM old.accounts WHERE client_key = ?", (key,)
            )
        book = AccountBook(old.data_dir)
        try:
            book.move(key, home.events_url, old.events_url)
        finally:
            book.close()
        eventually(
            lambda: (
                "wrong_endpoint" in old.post([{"client_key": key}]).text
                and "unknown_client_key" not in home.post([{"client_key": key}]).text
            ),
            what="both servers to see the move",
        )
        return old, home, key

    @both_clients
    def test_events_are_resent_to_the_named_endpoint(
        self,
        moved: tuple[RunningServer, RunningServer, str],
        make_client: MakeClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """wrong_endpoint: the events go to the endpoint the server named, with a warning."""
        old, home, key = moved
        failures: list[object] = []
        client = make_client(key, old.events_url, on_failure=lambda e, errs: failures.append(e))
        with caplog.at_level(logging.WARNING, "qlevents.client"):
            sent = views(client, 5)
            assert client.flush(30)
        assert product_ids(home.stored(key)) == sent
        assert old.stored(key) == []
        assert failures == []
        assert f"homed on {home.events_url}" in caplog.text


class TestExit:
    def test_exit_without_flush_sends_what_was_queued(
        self, shared_server: RunningServer, account: str, tmp_path: Path
    ) -> None:
        """A script that queues events and just exits: atexit delivers all of them."""
        from tests.client.conftest import run_script

        done = run_script(
            """
            import sys
            from qlevents import Client
            client = Client(sys.argv[1], sys.argv[2], flush_interval=30)
            for i in range(300):
                client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
            """,
            account,
            shared_server.events_url,
        )
        assert done.returncode == 0, done.stderr
        assert product_ids(shared_server.stored(account)) == sorted(f"p{i}" for i in range(300))

    def test_exit_delivers_for_a_client_dropped_unclosed(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """A client made and dropped inside a function: exit still delivers what it queued."""
        from tests.client.conftest import run_script

        done = run_script(
            """
            import sys
            from qlevents import Client

            def main():
                client = Client(sys.argv[1], sys.argv[2], flush_interval=30)
                for i in range(300):
                    client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")

            main()
            """,
            account,
            shared_server.events_url,
        )
        assert done.returncode == 0, done.stderr
        assert product_ids(shared_server.stored(account)) == sorted(f"p{i}" for i in range(300))

    @pytest.mark.parametrize("flavour", ["Client", "AsyncClient"])
    def test_an_outage_at_exit_is_one_line_per_cause(self, flavour: str) -> None:
        """Server down (a closed port), 10,005 events queued, exit: one line for all of them,
        naming the real cause, instead of a line per event."""
        from tests.client.conftest import run_script

        unreachable = f"http://127.0.0.1:{free_port()}/events"
        done = run_script(OUTAGE_AT_EXIT[flavour], unreachable)
        assert done.returncode == 0, done.stderr
        warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
        assert len(warnings) <= 3, done.stderr  # a first failed try (per sender), and close
        assert warnings[-1].startswith(
            "WARNING close: 10005 events dropped, not stored: connection refused"
        )
        assert "closed before the server answered" not in done.stderr
        assert done.stdout.split() == ["on_failure", "10005"]


OUTAGE_AT_EXIT = {
    "Client": """
import atexit, logging, sys
from qlevents import Client
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
failed = []
atexit.register(lambda: print("on_failure", len(failed)))  # runs after the client's hook
client = Client("qlk_key", sys.argv[1], shutdown_timeout=1, max_queue_size=20_000,
                on_failure=lambda event, errors: failed.append(errors[0].code))
for i in range(10_005):
    client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
""",
    "AsyncClient": """
import asyncio, atexit, logging, sys
from qlevents import AsyncClient
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
failed = []
atexit.register(lambda: print("on_failure", len(failed)))  # runs after the client's hook

async def main():
    client = AsyncClient("qlk_key", sys.argv[1], shutdown_timeout=1, max_queue_size=20_000,
                         on_failure=lambda event, errors: failed.append(errors[0].code))
    for i in range(10_005):
        client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")

asyncio.run(main())
""",
}


@both_clients
class TestConnections:
    def test_connection_closed_by_the_server_while_idle_is_not_an_error(
        self,
        shared_server: RunningServer,
        account: str,
        shared_proxy: FaultProxy,
        make_client: MakeClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A keep-alive connection the server closed is replaced, not failed on and retried."""
        shared_proxy.add(CloseAfter())
        client = make_client(account, shared_proxy.url)
        first = views(client, 3, prefix="a")
        assert client.flush(30)
        eventually(lambda: shared_proxy.closed_after == 1, what="the proxy to close the connection")
        second = views(client, 3, prefix="b")
        assert client.flush(30)
        assert client.stats()["retried"] == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert product_ids(shared_server.stored(account)) == sorted(first + second)


@both_clients
class TestServerLimits:
    def test_batch_over_the_servers_limit_is_split(
        self, serve: Callable[..., RunningServer], make_client: MakeClient
    ) -> None:
        """A server with --max-events 4 answers 413; the client splits and stores all 20."""
        server = serve("--max-events", "4")
        client = make_client(server.client_key, server.events_url, flush_interval=60)
        sent = views(client, 20)
        assert client.flush(30)
        assert product_ids(server.stored()) == sent

    def test_gzip_bodies_are_stored(
        self, shared_server: RunningServer, account: str, make_client: MakeClient
    ) -> None:
        """With gzip_min_bytes=0 every body is compressed; the server stores them all."""
        client = make_client(account, shared_server.events_url, gzip_min_bytes=0)
        sent = views(client, 50)
        assert client.flush(30)
        assert product_ids(shared_server.stored(account)) == sent


class TestDroppedClient:
    def test_unclosed_client_still_delivers_while_the_process_lives(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """A client garbage-collected without close(): its sender drains the queue, then ends."""
        import gc

        client = Client(account, shared_server.events_url, flush_interval=0.05)
        sent = views(client, 5)
        worker = client._sender
        del client
        gc.collect()
        assert worker is not None
        worker.join(30)
        assert not worker.is_alive()
        assert product_ids(shared_server.stored(account)) == sent


class TestRealRateLimit:
    def test_server_rate_limit_429s_are_waited_out(
        self, serve: Callable[..., RunningServer], make_client: MakeClient
    ) -> None:
        """Against the server's own rate limit (100 events/s): 429s, retries, all stored once."""
        server = serve("--rate-limit", "100", "--rate-burst", "50")
        client = make_client(server.client_key, server.events_url, max_batch_events=50)
        sent = views(client, 200)
        assert client.flush(30)
        assert product_ids(server.stored()) == sent
        assert client.stats()["retried"] >= 1
