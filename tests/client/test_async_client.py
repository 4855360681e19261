"""AsyncClient used as asyncio applications use it: in coroutines, across loops, at exit.

The behaviour it shares with Client is asserted by the tests marked ``@both_clients``
(test_client.py, test_worker.py, test_spool.py); here is what is its own.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import pytest

from qlevents import Answer, AsyncClient, ClientError
from qlevents.testing import AsyncRecordingTransport
from tests.client.conftest import FAST, product_ids, run_script
from tests.support import RunningServer, conversion, free_port, view

PERMALINK = "https://s.example/"


class TestAsyncClient:
    # Retries and closing are asserted for both clients (test_worker.py, test_client.py).
    def test_views_and_conversions_are_stored(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """view()/conversion() from a coroutine, then await flush(): all stored once."""

        async def main() -> dict[str, int]:
            async with AsyncClient(account, shared_server.events_url, **FAST) as client:
                for i in range(300):
                    client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
                client.conversion(product_id="c", unit_price=10.1, units=3)
                assert await client.flush(20)
                return client.stats()

        stats = asyncio.run(main())
        stored = shared_server.stored(account)
        assert product_ids(stored) == sorted([f"p{i}" for i in range(300)] + ["c"])
        assert next(e for e in stored if e["product_id"] == "c")["price"] == 30.3
        assert stats["stored"] == 301 and stats["pending"] == 0

    def test_send_returns_the_servers_answer(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """await send() posts at once and returns processed / failed / errors."""

        async def main() -> None:
            async with AsyncClient(account, shared_server.events_url, **FAST) as client:
                result = await client.send([view(account), conversion("qlk_x")])
                assert len(result.processed) == 1
                assert [e.code for e in result.errors] == ["unknown_client_key"]

        asyncio.run(main())
        assert len(shared_server.stored(account)) == 1
        assert shared_server.stored("qlk_x") == []

    def test_outside_an_event_loop_is_a_clear_error(self) -> None:
        """Queuing with no running loop says to use Client instead."""
        client = AsyncClient("k", "http://127.0.0.1:9/events", transport=AsyncRecordingTransport())
        with pytest.raises(ClientError, match="running event loop"):
            client.view(product_id="p", price=1, permalink="https://s.example/")
        asyncio.run(client.close())


class HangsFirst(AsyncRecordingTransport):
    """Records every post; the first one never gets an answer (the loop ends under it)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: asyncio.Event | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        if not self.requests:
            self._answer(url, body, headers)  # recorded, then no answer
            assert self.started is not None
            self.started.set()
            await asyncio.Event().wait()
        return await super().post(url, body, headers)


class TestLoops:
    @pytest.mark.filterwarnings("ignore::ResourceWarning")  # loop 1's sockets, left to the GC
    def test_a_client_outlives_its_event_loop(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """Made outside any loop, used in two asyncio.run() in turn: it sends from each."""
        client = AsyncClient(account, shared_server.events_url, **FAST)

        async def first() -> None:
            assert (await client.send([view(account, product_id="a")])).ok
            client.view(product_id="b", price=1, permalink=PERMALINK)

        async def second() -> None:
            client.view(product_id="c", price=1, permalink=PERMALINK)
            assert await client.flush(20)
            assert (await client.send([view(account, product_id="d")])).ok
            await client.close()

        asyncio.run(first())
        asyncio.run(second())
        gc.collect()
        assert product_ids(shared_server.stored(account)) == ["a", "b", "c", "d"]

    def test_a_batch_in_flight_when_the_loop_ends_goes_back_with_its_key(self) -> None:
        """asyncio.run() returns mid-request: the exit hook sends the batch again, same key."""
        transport = HangsFirst()
        client = AsyncClient("k", "https://evt.example/events", transport=transport, **FAST)

        async def main() -> None:
            transport.started = asyncio.Event()
            for i in range(3):
                client.view(product_id=f"p{i}", price=1, permalink=PERMALINK)
            await asyncio.wait_for(transport.started.wait(), 30)

        asyncio.run(main())  # cancels the sender task, its request unanswered
        assert client.stats()["pending"] == 3
        client._close_at_exit()  # what the interpreter's exit hook runs
        first, again = transport.requests
        assert first.idempotency_key == again.idempotency_key and first.body == again.body
        assert [e["product_id"] for e in again.events] == ["p0", "p1", "p2"]
        stats = client.stats()
        assert stats["stored"] == 3 and stats["handed_to_network"] == 3 and stats["dropped"] == 0

    def test_close_is_bounded_when_the_transport_never_answers(self) -> None:
        """close(0) with a post that hangs: the task is cancelled after its grace, and the
        batch is counted dropped and given to on_failure, not lost silently."""
        transport = HangsFirst()
        failures: list[str] = []
        client = AsyncClient(
            "k", "https://evt.example/events", transport=transport, connect_timeout=0.01,
            timeout=0.01, flush_interval=0.01,
            on_failure=lambda event, errors: failures.append(errors[0].code),
        )  # fmt: skip

        async def main() -> None:
            transport.started = asyncio.Event()
            client.view(product_id="p", price=1, permalink=PERMALINK)
            await asyncio.wait_for(transport.started.wait(), 30)
            await client.close(timeout=0)

        asyncio.run(main())
        assert failures == ["not_delivered"]
        assert client.stats()["dropped"] == 1 and client.stats()["pending"] == 0

    def test_a_loop_closed_under_its_task_is_taken_over(self) -> None:
        """A loop closed without cancelling the sender (no asyncio.run): the next loop's
        flush starts a sender of its own and delivers."""
        transport = AsyncRecordingTransport()
        client = AsyncClient("k", "https://evt.example/events", transport=transport, **FAST)

        async def queue() -> None:
            client.view(product_id="p", price=1, permalink=PERMALINK)

        loop = asyncio.new_event_loop()
        loop.run_until_complete(queue())
        abandoned = client._sender
        loop.close()

        async def later() -> None:
            assert await client.flush(10)
            await client.close()

        asyncio.run(later())
        assert abandoned is not None and abandoned.ended and client._sender is not abandoned
        assert [e["product_id"] for e in transport.events] == ["p"]

    def test_unclosed_client_still_delivers_while_the_loop_lives(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """A client garbage-collected without close(): its task drains the queue, then ends."""

        async def main() -> None:
            client = AsyncClient(account, shared_server.events_url, flush_interval=0.05)
            for i in range(5):
                client.view(product_id=f"p{i}", price=1, permalink=PERMALINK)
            sender = client._sender
            assert sender is not None
            del client
            gc.collect()
            await asyncio.wait_for(sender.task, 30)

        asyncio.run(main())
        assert product_ids(shared_server.stored(account)) == [f"p{i}" for i in range(5)]

    def test_a_spool_left_behind_is_sent_once_a_loop_runs(self, tmp_path: Path) -> None:
        """Made at import time (no loop) on a spool holding events: the first flush sends them."""
        spool = tmp_path / "spool"

        async def leave_events() -> None:
            unreachable = f"http://127.0.0.1:{free_port()}/events"
            client = AsyncClient("k", unreachable, spool_dir=spool, **FAST)
            for i in range(3):
                client.view(product_id=f"p{i}", price=1, permalink=PERMALINK)
            await client.close(timeout=0)

        asyncio.run(leave_events())
        transport = AsyncRecordingTransport()
        client = AsyncClient(
            "k", "https://evt.example/events", spool_dir=spool, transport=transport
        )

        async def later() -> None:
            assert await client.flush(20)
            await client.close()

        asyncio.run(later())
        assert [e["product_id"] for e in transport.events] == ["p0", "p1", "p2"]


QUEUE_AND_RETURN = """
import asyncio, logging, sys
from qlevents import AsyncClient
logging.basicConfig(level=logging.WARNING)
key, url = sys.argv[1:3]
options = dict(arg.split("=", 1) for arg in sys.argv[3:])

async def main():
    client = AsyncClient(
        key, url, flush_interval=30, shutdown_timeout=float(options.get("timeout", 5)),
        spool_dir=options.get("spool"),
        on_failure=lambda event, errors: print("failed", event["product_id"], errors[0].code),
    )
    for i in range(int(options.get("count", 300))):
        client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")

asyncio.run(main())  # returns without close(): the loop is gone by the time the process exits
"""


class TestExit:
    def test_exit_without_close_sends_what_was_queued(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """asyncio.run() returns, the process exits: every queued event is stored."""
        done = run_script(QUEUE_AND_RETURN, account, shared_server.events_url)
        assert done.returncode == 0, done.stderr
        assert product_ids(shared_server.stored(account)) == sorted(f"p{i}" for i in range(300))

    def test_exit_is_bounded_and_counts_what_it_drops(self) -> None:
        """Server unreachable: exit gives up after shutdown_timeout, logs and reports the drop."""
        unreachable = f"http://127.0.0.1:{free_port()}/events"
        done = run_script(QUEUE_AND_RETURN, "k", unreachable, "count=3", "timeout=0.5")
        assert done.returncode == 0, done.stderr
        dropped = "WARNING:qlevents.client:close: 3 events dropped, not stored: connection refused"
        assert dropped in done.stderr
        assert done.stdout.split("\n")[:3] == [f"failed p{i} not_delivered" for i in range(3)]

    def test_exit_with_a_spool_sends_what_was_spooled(
        self, shared_server: RunningServer, account: str, tmp_path: Path
    ) -> None:
        """With a spool_dir, exit sends from the spool; nothing is left in it."""
        spool = tmp_path / "spool"
        done = run_script(
            QUEUE_AND_RETURN, account, shared_server.events_url, "count=50", f"spool={spool}"
        )
        assert done.returncode == 0, done.stderr
        assert product_ids(shared_server.stored(account)) == sorted(f"p{i}" for i in range(50))
        with sqlite3.connect(spool / "qlevents-spool.sqlite3") as conn:
            assert conn.execute("SELECT COUNT(*) FROM groups").fetchone() == (0,)

    def test_exit_goes_through_the_transport_it_was_given(self) -> None:
        """A custom AsyncTransport is driven on a private loop at exit."""
        done = run_script(
            """
            import asyncio, atexit
            from qlevents import AsyncClient
            from qlevents.testing import AsyncRecordingTransport

            transport = AsyncRecordingTransport()
            # Registered first, so it runs after the client's own exit hook.
            atexit.register(lambda: print(sorted(e["product_id"] for e in transport.events)))

            async def main():
                client = AsyncClient(
                    "k", "https://evt.example/events", transport=transport, flush_interval=30
                )
                client.enqueue([{"event": "conversion", "product_id": f"c{i}", "price": 1}
                                for i in range(3)])

            asyncio.run(main())
            """
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "['c0', 'c1', 'c2']"
