"""Test support: a real ``qlevents serve`` process on loopback, and valid events to send.

``serve(...)`` starts one (options as on the command line) and stops it after the test;
``server`` is one started with defaults and an admin token. Each ``RunningServer`` can be
stopped, killed (SIGKILL) and started again on the same port and data directory, and reads
what its store holds, so tests assert on what was stored, not only on what was answered.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from qlevents.accounts import AccountBook
from qlevents.store.sqlite import SQLiteEventStore

ADMIN_TOKEN = "test-admin-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"qlevents serve did not become healthy:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` and wait for the process; returns its exit code."""
        assert self.process is not None
        children = child_pids(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.process = None
        # The store's writer process ends when the server's end of its pipe closes: wait for
        # it too, so that the next test finds the files closed (an unmount would be refused).
        wait_gone(children, timeout)
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> RunningServer:
        if self.process is not None:
            self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        """The log lines holding ``needle``, once there are ``count`` of them.

        Access-log lines are written at the end of the event-loop iteration that answered,
        so they may reach the file just after the answer reached the test.
        """
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if needle in line]
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

    @property
    def client_key(self) -> str:
        """The key of the demo account ``serve --demo`` creates on first run."""
        book = AccountBook(self.data_dir)
        try:
            return next(a.client_key for a in book.all() if a.name == "demo")
        finally:
            book.close()

    def stored(self, client_key: str | None = None) -> list[dict[str, Any]]:
        """Every event the store holds, as the export command writes them."""
        store = SQLiteEventStore(self.data_dir / "events.sqlite3")
        events: list[dict[str, Any]] = []
        position = 0
        while True:
            batch = store.read_sync(position, 10_000, client_key)
            for position, event in batch:  # noqa: B007
                events.append(json.loads(_encode(event)))
            if len(batch) < 10_000:
                return events

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        """POST a JSON value (or raw bytes / str) to /events."""
        if isinstance(body, bytes | str):
            return httpx.post(self.events_url, content=body, **kwargs)
        return httpx.post(self.events_url, json=body, **kwargs)


def _encode(event: Any) -> bytes:
    import msgspec

    return msgspec.json.encode(event)


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


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus text page."""
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" ([0-9.e+]+)"
    found = re.search(r"^" + pattern + "$", text, re.M)
    assert found, f"{name}{{{labels}}} not in metrics"
    return float(found.group(1))
