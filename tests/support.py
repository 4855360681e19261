"""Test support: a real ``qlevents serve`` process on loopback, the same app driven in this
process, and valid events to send.

``serve(...)`` starts a server (options as on the command line) and stops it after the test;
``server`` is one started with defaults and an admin token; ``shared_server`` is one server
for the whole session, for tests that only send requests and read answers, each with an
``account`` of its own. Each ``RunningServer`` can be stopped, killed (SIGKILL) and started
again on the same port and data directory, and reads what its store holds, so tests assert
on what was stored, not only on what was answered.

``LocalApp`` runs ``EventsApp`` with the memory store through ASGI alone (lifespan and http
messages, no socket): what property tests send by the thousand. What only the wire shows
(chunked bodies, Content-Length, connections, the SQLite store) stays with ``RunningServer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from qlevents.accounts import AccountBook
from qlevents.server.app import EventsApp
from qlevents.server.config import Settings
from qlevents.store.memory import MemoryEventStore
from qlevents.store.sqlite import SQLiteEventStore

ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN_TOKEN}"}

#: Built once: httpx builds a TLS context for every ``httpx.get``/``post`` otherwise, 20-40 ms
#: of CPU each, though tests only speak plain HTTP on loopback.
TLS_CONTEXT = ssl.create_default_context()


def get(url: str, **kwargs: Any) -> httpx.Response:
    """``httpx.get`` without a TLS context of its own."""
    return httpx.get(url, verify=TLS_CONTEXT, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    """``httpx.post`` without a TLS context of its own."""
    return httpx.post(url, verify=TLS_CONTEXT, **kwargs)


#: The ports tests listen on: below Linux's ephemeral range (32768-60999), which outgoing
#: connections take at any moment, and a slice of its own for each test process (xdist's
#: gw0, gw1, ...), so that a port found free here is still free when a server binds it. A
#: port the kernel picked (bind to 0) was once taken in between by another process.
PORTS_PER_PROCESS = 1500
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
PORTS = range(
    20000 + (int(_worker) % 8 if _worker.isdigit() else 0) * PORTS_PER_PROCESS,
    20000 + (int(_worker) % 8 + 1 if _worker.isdigit() else 1) * PORTS_PER_PROCESS,
)
_port_turn = iter(range(10**9))


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free port of this test process's slice, not handed out lately (the slice is used
    round-robin, so a port a test just let go rests before it is used again)."""
    for _ in PORTS:
        port = PORTS[next(_port_turn) % len(PORTS)]
        if port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {PORTS}")


def _event_dict(event: Any) -> dict[str, Any]:
    """A stored event as the export command writes it (plain JSON types)."""
    result: dict[str, Any] = json.loads(msgspec.json.encode(event))
    return result


class RunningServer:
    """A ``qlevents serve`` subprocess and its data directory."""

    def __init__(
        self, data_dir: Path, port: int, options: list[str], log_path: Path, *, demo: bool = True
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.options = options
        #: Start with ``--demo``, which creates the account that ``client_key`` reads.
        self.demo = demo
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.events_url = f"{self.url}/events"
        self.process: subprocess.Popen[bytes] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> RunningServer:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable, "-m", "qlevents", "serve",
            "--port", str(self.port), "--data-dir", str(self.data_dir), *self.options,
            *(["--demo"] if self.demo else []),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"qlevents serve exited early:\n{self.log()}")
            try:
                if get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"qlevents serve did not become healthy:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` and wait for the process; returns its exit code."""
        assert self.process is not None
        children = child_pids(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Fail the test, but leave no server behind (one once ran on for an hour).
            for pid in [self.process.pid, *children]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None
            raise AssertionError(
                f"qlevents serve did not stop within {timeout:.0f} s of signal {sig}:\n{self.log()}"
            ) from None
        self.process = None
        # The store's writer process ends when the server's end of its pipe closes: wait for
        # it too, so that the next test finds the files closed (an unmount would be refused).
        wait_gone(children, timeout)
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def discard(self) -> None:
        """SIGKILL the server and every process it started, and wait: the end of a fixture
        (a supervisor killed alone leaves its workers running, unaware)."""
        if self.process is None:
            return
        for pid in child_pids(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stop(signal.SIGKILL)

    def restart(self) -> RunningServer:
        if self.process is not None:
            self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_mark(self) -> int:
        """Where the log ends once every request answered so far has its access-log line
        there: ``wait_for_log(..., since=mark)`` then reads only later requests' lines.
        A request of its own marks the spot (so the access log must be on): lines are
        written in order, just after their answers."""
        marker = f"/log-mark-{uuid.uuid4().hex}"
        self.get(marker)
        assert self.wait_for_log(f'"GET {marker}"'), f"{marker} never reached the log"
        return self.log_path.stat().st_size

    def wait_for_log(
        self, needle: str, count: int = 1, timeout: float = 10.0, since: int = 0
    ) -> list[str]:
        """The log lines holding ``needle`` (written after ``since``), once there are
        ``count`` of them.

        Access-log lines are written at the end of the event-loop iteration that answered,
        so they may reach the file just after the answer reached the test.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_bytes()[since:].decode(errors="replace")
            lines = [line for line in text.splitlines() if needle in line]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    # --- data ------------------------------------------------------------------------------

    def add_account(self, name: str = "shop", endpoint: str | None = None) -> str:
        """Create an account (through the data directory) and return its client key.

        A running server sees it within its poll interval (1 s); ``wait_for_account`` waits.
        """
        book = AccountBook(self.data_dir)
        try:
            return book.add(name, endpoint).client_key
        finally:
            book.close()

    def create_account(self, name: str = "shop") -> str:
        """Create an account through the admin API (the server needs ``--admin-token
        ADMIN_TOKEN``) and return its client key: in use at once, no poll to wait for."""
        answer = post(f"{self.url}/admin/accounts", json={"name": name}, headers=ADMIN_HEADERS)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["client_key"])

    @property
    def client_key(self) -> str:
        """The key of the demo account ``serve --demo`` creates on first run."""
        book = AccountBook(self.data_dir)
        try:
            return next(a.client_key for a in book.all() if a.name == "demo")
        finally:
            book.close()

    def read(
        self, after: int = 0, client_key: str | None = None, limit: int = 10_000
    ) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` stored events after position ``after``, with their positions."""
        store = SQLiteEventStore(self.data_dir / "events.sqlite3")
        return [(p, _event_dict(e)) for p, e in store.read_sync(after, limit, client_key)]

    def stored(self, client_key: str | None = None) -> list[dict[str, Any]]:
        """Every event the store holds, as the export command writes them."""
        return _read_all(self.read, client_key)

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        """POST a JSON value (or raw bytes / str) to /events."""
        if isinstance(body, bytes | str):
            return post(self.events_url, content=body, **kwargs)
        return post(self.events_url, json=body, **kwargs)

    def post_chunks(self, chunks: list[bytes], **kwargs: Any) -> httpx.Response:
        """POST a body in ``chunks``, without Content-Length (Transfer-Encoding: chunked)."""
        return post(self.events_url, content=iter(chunks), **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET ``path`` (e.g. ``/healthz``)."""
        return get(self.url + path, **kwargs)


@contextlib.contextmanager
def running_server(tmp: Path, *options: str) -> Iterator[RunningServer]:
    """A server in ``tmp`` with ``options``, killed on exit: for fixtures wider than a test."""
    server = RunningServer(tmp / "data", free_port(), list(options), tmp / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.discard()


def _read_all(
    read: Callable[[int, str | None], list[tuple[int, dict[str, Any]]]], client_key: str | None
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    position = 0
    while batch := read(position, client_key):
        events += [event for _, event in batch]
        position = batch[-1][0]
    return events


class LocalApp:
    """``EventsApp`` with the memory store, driven in this process through ASGI alone.

    Its lifespan runs on an event loop of its own, kept between requests (the account
    poller and the store live on it); requests go through httpx's ``ASGITransport``. It
    answers as ``RunningServer`` does: ``post``, ``get``, ``read``, ``stored``.
    """

    url = "http://127.0.0.1:8080"

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.data_dir = data_dir
        self.store = MemoryEventStore()
        self.app = EventsApp(
            Settings(data_dir=data_dir, admin_token=ADMIN_TOKEN, access_log=False, **settings),
            store=self.store,
        )
        self._runner = asyncio.Runner()
        self._lifespan_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lifespan_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lifespan: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._gc_threshold = gc.get_threshold()

    def start(self) -> LocalApp:
        self._runner.run(self._start())
        return self

    def stop(self) -> None:
        try:
            self._runner.run(self._stop())
        finally:
            self._runner.close()
            # Start-up tunes the collector for a server process; give this one its own back.
            gc.unfreeze()
            gc.set_threshold(*self._gc_threshold)

    def __enter__(self) -> LocalApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._lifespan = asyncio.create_task(
            self.app(scope, self._lifespan_in.get, self._lifespan_out.put)
        )
        await self._lifespan_in.put({"type": "lifespan.startup"})
        started = await self._lifespan_out.get()
        assert started["type"] == "lifespan.startup.complete", started
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(self.app), base_url=self.url)

    async def _stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        await self._lifespan_in.put({"type": "lifespan.shutdown"})
        stopped = await self._lifespan_out.get()
        assert stopped["type"] == "lifespan.shutdown.complete", stopped
        assert self._lifespan is not None
        await self._lifespan

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert self._client is not None, "start() first"
        return self._runner.run(self._client.request(method, path, **kwargs))

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        """POST a JSON value (or raw bytes / str) to /events."""
        if isinstance(body, bytes | str):
            return self.request("POST", "/events", content=body, **kwargs)
        return self.request("POST", "/events", json=body, **kwargs)

    def post_chunks(self, chunks: list[bytes], **kwargs: Any) -> httpx.Response:
        """POST a body in ``chunks``: one ``http.request`` message each, no Content-Length."""

        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return self.request("POST", "/events", content=stream(), **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def create_account(self, name: str = "shop") -> str:
        """Create an account through the admin API and return its client key."""
        answer = self.request("POST", "/admin/accounts", json={"name": name}, headers=ADMIN_HEADERS)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["client_key"])

    def read(
        self, after: int = 0, client_key: str | None = None, limit: int = 10_000
    ) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` stored events after position ``after``, with their positions."""
        batch = self._runner.run(self.store.read(after, limit, client_key))
        return [(p, _event_dict(e)) for p, e in batch]

    def stored(self, client_key: str | None = None) -> list[dict[str, Any]]:
        """Every event the store holds, as the export command writes them."""
        return _read_all(self.read, client_key)


def view(client_key: str, **fields: Any) -> dict[str, Any]:
    """A valid view event; ``fields`` override."""
    event = {
        "client_key": client_key,
        "price": 123.41,
        "product_id": "123-AA-X23",
        "event": "view",
        "permalink": "https://yourstore.com/123-AA-X23/",
        "vid": "DASDAS-#CCCC-NA",
        "tags": ["user:new"],
        "channels": ["online"],
    }
    event.update(fields)
    return event


def conversion(client_key: str, **fields: Any) -> dict[str, Any]:
    """A valid conversion event; ``fields`` override."""
    event = {
        "client_key": client_key,
        "price": 60,
        "product_id": "455DD-AA-X23",
        "event": "conversion",
        "vid": "DASDAS-#CCCC-NA",
        "tags": ["user:new"],
        "channels": ["online"],
        "units": 3,
    }
    event.update(fields)
    return event


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (Linux; empty elsewhere)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for thread in threads:
        try:
            direct = [
                int(child)
                for child in Path(f"/proc/{pid}/task/{thread}/children").read_text().split()
            ]
        except OSError:
            continue
        for child in direct:
            found += [child, *child_pids(child)]
    return found


def wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until none of ``pids`` runs any more (exited, or a zombie nobody reaped yet)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.01)


def metric(text: str, name: str, labels: str = "", default: float | None = None) -> float:
    """The value of one sample in a Prometheus text page (``default`` if it is not there)."""
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" ([0-9.e+]+)"
    found = re.search(r"^" + pattern + "$", text, re.M)
    if found is None and default is not None:
        return default
    assert found, f"{name}{{{labels}}} not in metrics"
    return float(found.group(1))


def holds_within(condition: Callable[[], bool], within: float) -> bool:
    """Whether ``condition`` holds within ``within`` seconds, polled every 10 ms (a change a
    watch or a poll brings)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
