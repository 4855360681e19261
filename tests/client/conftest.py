"""Fixtures of the SDK tests: clients closed after the test, a fault proxy, a script runner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from qlevents import Client
from tests.client.faults import FaultProxy
from tests.support import RunningServer

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


@pytest.fixture
def make_client() -> Iterator[Callable[..., Client]]:
    """Build clients with the FAST options; every one is closed after the test."""
    made: list[Client] = []

    def make(client_key: str, endpoint: str, **options: Any) -> Client:
        client = Client(client_key, endpoint, **{**FAST, **options})
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=10)


@pytest.fixture
def proxy(server: RunningServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of ``server``."""
    with FaultProxy(server.events_url) as running:
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
