"""AsyncClient: the same behaviour from an asyncio task, against the real server."""

from __future__ import annotations

import asyncio

import pytest

from qlevents import AsyncClient, ClientClosedError, ClientError
from qlevents.testing import AsyncRecordingTransport
from tests.client.conftest import FAST, product_ids
from tests.client.faults import FaultProxy, Reset, Status
from tests.support import RunningServer, conversion, view


class TestAsyncClient:
    def test_views_and_conversions_are_stored(self, server: RunningServer) -> None:
        """view()/conversion() from a coroutine, then await flush(): all stored once."""

        async def main() -> dict[str, int]:
            async with AsyncClient(server.client_key, server.events_url, **FAST) as client:
                for i in range(300):
                    client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
                client.conversion(product_id="c", unit_price=10.1, units=3)
                assert await client.flush(20)
                return client.stats()

        stats = asyncio.run(main())
        stored = server.stored()
        assert product_ids(stored) == sorted([f"p{i}" for i in range(300)] + ["c"])
        assert next(e for e in stored if e["product_id"] == "c")["price"] == 30.3
        assert stats["processed"] == 301 and stats["pending"] == 0

    def test_send_returns_the_servers_answer(self, server: RunningServer) -> None:
        """await send() posts at once and returns processed / failed / errors."""

        async def main() -> None:
            async with AsyncClient(server.client_key, server.events_url, **FAST) as client:
                result = await client.send([view(server.client_key), conversion("qlk_x")])
                assert len(result.processed) == 1
                assert [e.code for e in result.errors] == ["unknown_client_key"]

        asyncio.run(main())
        assert len(server.stored()) == 1

    def test_5xx_and_resets_are_retried_with_one_key(
        self, server: RunningServer, proxy: FaultProxy
    ) -> None:
        """The task retries like the thread does: same Idempotency-Key, stored once."""
        proxy.add(Status(503, retry_after="0"), Reset())

        async def main() -> None:
            async with AsyncClient(server.client_key, proxy.url, **FAST) as client:
                for i in range(5):
                    client.view(product_id=f"p{i}", price=1, permalink="https://s.example/")
                assert await client.flush(20)

        asyncio.run(main())
        assert len(proxy.seen) == 3 and len(set(proxy.keys)) == 1
        assert product_ids(server.stored()) == [f"p{i}" for i in range(5)]

    def test_closed_client_refuses_events(self) -> None:
        """After await close(), view() raises ClientClosedError."""

        async def main() -> None:
            client = AsyncClient(
                "k", "http://127.0.0.1:9/events", transport=AsyncRecordingTransport()
            )
            await client.close()
            with pytest.raises(ClientClosedError):
                client.view(product_id="p", price=1, permalink="https://s.example/")

        asyncio.run(main())

    def test_outside_an_event_loop_is_a_clear_error(self) -> None:
        """Queuing with no running loop says to use Client instead."""
        client = AsyncClient("k", "http://127.0.0.1:9/events", transport=AsyncRecordingTransport())
        with pytest.raises(ClientError, match="running event loop"):
            client.view(product_id="p", price=1, permalink="https://s.example/")
        asyncio.run(client.close())
