"""Fixtures of the SDK tests: clients closed after the test, a fault proxy, a script runner.

``make_client`` builds a ``Client``; a test marked ``@both_clients`` runs once with a
``Client`` and once with an ``AsyncClient`` driven from the test's thread (``LoopDriven``),
so behaviour the two share is asserted by the same test.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

import pytest

from qlevents import Answer, AsyncClient, AsyncTransport, Client, Transport
from tests.client.faults import FaultProxy
from tests.support import RunningServer

#: Run the marked test (or class) with each client: ``flavour`` is "Client" or "AsyncClient".
both_clients = pytest.mark.parametrize("flavour", ["Client", "AsyncClient"], indirect=True)

#: Quick retries and batches, so fault tests take fractions of a second.
FAST: dict[str, Any] = {
    "flush_interval": 0.05,
    "backoff_base": 0.05,
    "backoff_cap": 0.5,
    "timeout": 2.0,
    "shutdown_timeout": 10.0,
}


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; fail after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or check}")
        time.sleep(0.05)


class EventLoopThread:
    """An event loop running in a thread of its own, for the test's duration."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, call: Callable[[], Any]) -> Any:
        """``call()`` on the loop (awaited if it returns an awaitable); its result here."""

        async def on_the_loop() -> Any:
            result = call()
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(on_the_loop(), self.loop).result(timeout=120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class AsyncOverSync(AsyncTransport):
    """A sync transport (a RecordingTransport) seen by an AsyncClient."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        return self.transport.post(url, body, headers)


class LoopDriven:
    """An AsyncClient used like a Client: each call runs on the loop and is awaited there."""

    def __init__(self, loop: EventLoopThread, client_key: str, endpoint: str, **options: Any):
        self._loop = loop
        if isinstance(options.get("transport"), Transport):
            options["transport"] = AsyncOverSync(options["transport"])
        self.client: AsyncClient = loop.run(lambda: AsyncClient(client_key, endpoint, **options))

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: self._loop.run(lambda: attribute(*args, **kwargs))

    def __enter__(self) -> LoopDriven:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@pytest.fixture
def flavour(request: pytest.FixtureRequest) -> str:
    """Which client ``make_client`` builds: "Client" unless the test is ``@both_clients``."""
    return getattr(request, "param", "Client")


@pytest.fixture
def make_client(flavour: str) -> Iterator[Callable[..., Any]]:
    """Build clients (of ``flavour``) with the FAST options; each is closed after the test."""
    made: list[Any] = []
    loop: list[EventLoopThread] = []

    def make(client_key: str, endpoint: str, **options: Any) -> Any:
        options = {**FAST, **options}
        if flavour == "Client":
            client: Any = Client(client_key, endpoint, **options)
        else:
            if not loop:
                loop.append(EventLoopThread())
            client = LoopDriven(loop[0], client_key, endpoint, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=10)
    for running in loop:
        running.close()


@pytest.fixture
def shared_proxy(shared_server: RunningServer) -> Iterator[FaultProxy]:
    """A fault proxy of this test's own in front of ``shared_server`` (no server start)."""
    with FaultProxy(shared_server.events_url) as running:
        yield running


def run_script(source: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run Python ``source`` in a fresh interpreter (the repo's src on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def product_ids(events: list[dict[str, Any]]) -> list[str]:
    return sorted(str(e["product_id"]) for e in events)
