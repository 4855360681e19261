"""Fixtures shared by every test; the helpers behind them are in ``tests/support.py``.

A test that restarts, kills or fills the disk of its server, or needs other options, takes
its own (``server``, ``serve``); one that only sends requests and reads answers can take
``shared_server`` and an ``account`` of its own on it, and skip a server start (~0.5 s).
"""

from __future__ import annotations

import os

# Before any qlevents module is imported: dashboard users made here, and in every server and
# command the tests start, get cheap password hashes (qlevents/users.py, FAST_HASHES).
os.environ["QLEVENTS_TEST_FAST_PASSWORD_HASHES"] = "1"

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import ADMIN_TOKEN, LocalApp, RunningServer, free_port, running_server

#: The files that take longest, in that order, first. Test processes take a whole file at a
#: time (``--dist loadfile``, in collection order: the Makefile turns off xdist's ordering by
#: number of tests, which put these files, of few but long tests, last and alone at the end).
LONGEST_FIRST = (
    "tests/ui/test_journeys.py",
    "tests/client/test_worker.py",
    "tests/test_cluster_faults_http.py",
    "tests/test_cluster_demo.py",
    "tests/store/test_jetstream_faults.py",
    "tests/server/test_properties.py",
    "tests/server/test_logging.py",
    "tests/test_accounts_jetstream.py",
    "tests/deploy/test_nginx_cluster.py",
    "tests/client/test_client.py",
    "tests/cli/test_serve.py",
    "tests/store/test_sqlite.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the others keep their order


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
        server.discard()


@pytest.fixture
def server(serve: Callable[..., RunningServer]) -> RunningServer:
    """A server with default options and an admin token (``ADMIN_TOKEN``)."""
    return serve("--admin-token", ADMIN_TOKEN)


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server with default options and the admin token, for every test of the session
    that leaves it as it found it: it only sends requests, under accounts of its own."""
    with running_server(tmp_path_factory.mktemp("shared"), "--admin-token", ADMIN_TOKEN) as server:
        yield server


@pytest.fixture
def account(shared_server: RunningServer, request: pytest.FixtureRequest) -> str:
    """The client key of a new account on ``shared_server``, for this test alone."""
    return shared_server.create_account(request.node.name[:200])


@pytest.fixture(scope="module")
def local_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApp]:
    """The app with the memory store, in this process, for the module (see ``LocalApp``)."""
    with LocalApp(tmp_path_factory.mktemp("local")) as app:
        yield app


@pytest.fixture(autouse=True, scope="module")
def _no_event_loop_left_running() -> Iterator[None]:
    """A module must not leave an asyncio loop running in the test process's thread (as
    Playwright's sync API does while it is started): the next module's ``asyncio.run`` and
    anyio tests would fail there, in whatever order the test processes take the files."""
    import asyncio.events

    yield
    assert asyncio.events._get_running_loop() is None, "this module left a loop running"
