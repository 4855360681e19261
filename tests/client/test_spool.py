"""The durable spool: events survive outages of any length, a full queue and SIGKILL.

Client and AsyncClient share the spool; every test runs with each (``@both_clients``).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qlevents import Client
from qlevents.client._build import view
from qlevents.client._spool import SPOOL_FILE
from tests.client.conftest import both_clients, eventually, product_ids
from tests.client.faults import FaultProxy, Hang
from tests.support import RunningServer, free_port

MakeClient = Callable[..., Any]

QUEUE_THEN_WAIT = {
    "Client": """
import sys, time
from qlevents import Client
key, url, spool = sys.argv[1:4]
client = Client(key, url, spool_dir=spool, flush_interval=0.05, timeout=20)
for i in range(50):
    client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
print("queued", flush=True)
time.sleep(60)
""",
    "AsyncClient": """
import asyncio, sys
from qlevents import AsyncClient
key, url, spool = sys.argv[1:4]

async def main():
    client = AsyncClient(key, url, spool_dir=spool, flush_interval=0.05, timeout=20)
    for i in range(50):
        client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
    print("queued", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
""",
}


def start_script(flavour: str, *args: str) -> subprocess.Popen[str]:
    """A process that spools 50 views with a ``flavour`` client, says so, then waits."""
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(QUEUE_THEN_WAIT[flavour]), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "queued", process.stderr
    return process


def sigkill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    process.stderr.close()


@both_clients
class TestSpoolSurvivesCrashes:
    def test_events_survive_sigkill_right_after_the_call(
        self,
        shared_server: RunningServer,
        account: str,
        make_client: MakeClient,
        tmp_path: Path,
        flavour: str,
    ) -> None:
        """SIGKILL after view() returned (server unreachable): the next client sends them."""
        spool = tmp_path / "spool"
        process = start_script(
            flavour, account, f"http://127.0.0.1:{free_port()}/events", str(spool)
        )
        sigkill(process)
        client = make_client(account, shared_server.events_url, spool_dir=spool)
        assert client.flush(30)
        assert product_ids(shared_server.stored(account)) == sorted(f"p{i}" for i in range(50))
        assert client.stats()["pending"] == 0

    def test_batch_in_flight_at_sigkill_is_stored_once(
        self,
        shared_server: RunningServer,
        account: str,
        make_client: MakeClient,
        tmp_path: Path,
        flavour: str,
    ) -> None:
        """Stored by the server, answer lost, sender killed: the re-send is a replay."""
        spool = tmp_path / "spool"
        with FaultProxy(shared_server.events_url) as proxy:
            proxy.add(Hang(30))
            process = start_script(flavour, account, proxy.url, str(spool))
            eventually(
                lambda: len(shared_server.stored(account)) == 50, what="the first send to be stored"
            )
            sigkill(process)
            client = make_client(account, proxy.url, spool_dir=spool)
            assert client.flush(30)
            assert len(proxy.seen) == 2 and proxy.keys[0] == proxy.keys[1]
        assert product_ids(shared_server.stored(account)) == sorted(f"p{i}" for i in range(50))


@both_clients
class TestSpoolInsteadOfDropping:
    def test_long_outage_and_full_queue_lose_nothing(
        self, server: RunningServer, make_client: MakeClient, tmp_path: Path
    ) -> None:
        """Past the retry budget and the queue size, spooled events wait for the server."""
        server.stop()
        client = make_client(
            server.client_key,
            server.events_url,
            spool_dir=tmp_path / "spool",
            max_queue_size=5,
            retry_budget=0.1,
        )
        for i in range(100):
            client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
        eventually(lambda: client.stats()["retried"] >= 5, what="retries past the budget")
        stats = client.stats()
        assert stats["dropped"] == 0 and stats["spooled"] == 100 and stats["pending"] == 100
        server.start()
        assert client.flush(30)
        assert product_ids(server.stored()) == sorted(f"p{i}" for i in range(100))

    def test_two_clients_on_one_spool_send_each_event_once(
        self, shared_server: RunningServer, account: str, make_client: MakeClient, tmp_path: Path
    ) -> None:
        """Only the lock holder sends from a spool; the other's events are sent by it, once."""
        spool = tmp_path / "spool"
        first = make_client(account, shared_server.events_url, spool_dir=spool)
        second = make_client(account, shared_server.events_url, spool_dir=spool)
        for i in range(30):
            first.view(product_id=f"a{i}", price=1, permalink="https://s.example/")
            second.view(product_id=f"b{i}", price=1, permalink="https://s.example/")
        firsts, seconds = first.flush(30), second.flush(30)
        assert firsts and seconds
        assert (firsts.stored, seconds.stored) == (30, 30)  # each its own, whoever sent them
        expected = [f"a{i}" for i in range(30)] + [f"b{i}" for i in range(30)]
        assert product_ids(shared_server.stored(account)) == sorted(expected)
        assert first.stats()["handed_to_network"] + second.stats()["handed_to_network"] == 60


@both_clients
class TestSpoolCap:
    def test_at_the_cap_new_events_are_dropped_and_the_spooled_ones_kept(
        self,
        shared_server: RunningServer,
        account: str,
        make_client: MakeClient,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """spool_max_events=5, server down: 5 spooled, 3 dropped, counted, warned once; the
        next client sends the 5 oldest."""
        spool = tmp_path / "spool"
        down = f"http://127.0.0.1:{free_port()}/events"
        client = make_client(account, down, spool_dir=spool, spool_max_events=5)
        with caplog.at_level(logging.WARNING, "qlevents.client"):
            for i in range(8):
                client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
        stats = client.stats()
        assert (stats["spooled"], stats["pending"]) == (5, 5)
        assert stats["dropped"] == stats["dropped_spool_full"] == 3
        assert sum("is full" in r.message for r in caplog.records) == 1
        result = client.flush(0.3)
        assert (result.dropped, result.pending, result.reasons) == (3, 5, {"spool_full": 3})
        client.close(timeout=0.2)
        assert client.stats()["pending"] == 5  # what the spool held at close
        assert "close: 2 more events were dropped since the last warning" in caplog.text
        after = make_client(account, shared_server.events_url, spool_dir=spool)
        assert after.flush(30)
        assert product_ids(shared_server.stored(account)) == [f"p{i}" for i in range(5)]

    def test_the_byte_cap_counts_the_events_encoded_size(
        self, make_client: MakeClient, tmp_path: Path
    ) -> None:
        """spool_max_bytes: as many events as fit their encoded size; the rest dropped."""
        size = len(view("k", "p0", 1, "https://s.example/"))
        down = f"http://127.0.0.1:{free_port()}/events"
        client = make_client(
            "k", down, spool_dir=tmp_path / "spool", spool_max_bytes=3 * size + size // 2
        )
        for i in range(5):
            client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
        stats = client.stats()
        assert (stats["spooled"], stats["dropped_spool_full"]) == (3, 2)
        client.close(timeout=0.2)  # nothing listens: do not wait out the default 10 s


class TestSpoolFormat:
    def test_a_spool_made_before_the_cap_is_upgraded_and_sent(
        self, shared_server: RunningServer, account: str, tmp_path: Path
    ) -> None:
        """A spool file without the owner column and totals (an earlier qlevents): its events
        count towards the cap and are sent."""
        spool = tmp_path / "spool"
        spool.mkdir()
        with sqlite3.connect(spool / SPOOL_FILE) as old:
            old.executescript(
                "CREATE TABLE groups (id INTEGER PRIMARY KEY AUTOINCREMENT, events BLOB NOT NULL,"
                " count INTEGER NOT NULL, created REAL NOT NULL, batch INTEGER);"
                "CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL);"
            )
            old.executemany(
                "INSERT INTO groups (events, count, created) VALUES (?, 1, 0)",
                [(view(account, f"old{i}", 1, "https://s.example/"),) for i in range(2)],
            )
        with Client(
            account, shared_server.events_url, spool_dir=spool, spool_max_events=3
        ) as client:
            for i in range(2):
                client.view(product_id=f"new{i}", price=1, permalink="https://s.example/")
            assert client.stats()["dropped_spool_full"] == 1  # 2 old + 1 new fill the cap
            assert client.flush(30).stored == 1  # its own; the old ones were no one's
        assert product_ids(shared_server.stored(account)) == ["new0", "old0", "old1"]
