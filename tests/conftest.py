"""Fixtures shared by every test; the helpers behind them are in ``tests/support.py``."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import ADMIN_TOKEN, RunningServer, free_port


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, as the server does."""
    return "asyncio"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start ``qlevents serve`` with the given command-line options; stopped after the test."""
    started: list[RunningServer] = []

    def start(
        *options: str, data_dir: Path | None = None, port: int | None = None
    ) -> RunningServer:
        index = len(started)
        server = RunningServer(
            data_dir or tmp_path / f"data{index}",
            port or free_port(),
            list(options),
            tmp_path / f"server{index}.log",
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.process is not None:
            server.stop(signal.SIGKILL)


@pytest.fixture
def server(serve: Callable[..., RunningServer]) -> RunningServer:
    """A server with default options and an admin token (``ADMIN_TOKEN``)."""
    return serve("--admin-token", ADMIN_TOKEN)
