"""Where the log goes: standard error by default, or a file (``--log-file``) that logrotate can
rename, reopened on SIGHUP, by one process or several; the health probes out of the access
log unless asked for."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from qlevents.cli import main
from tests.support import RunningServer, child_pids, free_port, view


def wait_for_line(path: Path, needle: str, count: int = 1, timeout: float = 10.0) -> list[str]:
    """The lines of the file ``path`` holding ``needle``, once there are ``count`` of them (or
    the timeout: access lines reach the file a moment after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = [line for line in text.splitlines() if needle in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def wait_for_file(path: Path, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


def post_on_new_connections(server: RunningServer, product: str, count: int) -> None:
    """``count`` requests, each on a connection of its own (so that any worker may take it)."""
    for i in range(count):
        answer = httpx.post(server.events_url, json=[view(server.client_key, product_id=product)])
        assert answer.status_code == 200, (i, answer.text)


class TestLogFile:
    def test_the_log_and_the_access_log_go_to_the_file(
        self, serve: Callable[..., RunningServer], tmp_path: Path
    ) -> None:
        """With --log-file, start-up lines and access lines are in the file, not on stderr."""
        log_file = tmp_path / "qlevents.log"
        server = serve("--log-file", str(log_file))
        server.post([view(server.client_key)])
        assert wait_for_line(log_file, '"POST /events" 200 processed=1')
        assert wait_for_line(log_file, "Application startup complete")
        assert "qlevents.access" not in server.log()

    @pytest.mark.parametrize("workers", ["1", "2"])
    def test_sighup_after_a_rename_writes_the_next_lines_to_a_new_file(
        self, serve: Callable[..., RunningServer], tmp_path: Path, workers: str
    ) -> None:
        """logrotate's way: rename the file, send SIGHUP; the next lines, of every worker, go to
        a new file of the old name, and nothing more to the renamed one."""
        log_file = tmp_path / "qlevents.log"
        server = serve("--log-file", str(log_file), "--workers", workers)
        post_on_new_connections(server, "before", 1)
        assert wait_for_line(log_file, '"POST /events" 200')
        rotated = log_file.rename(tmp_path / "qlevents.log.1")
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        assert wait_for_file(log_file), "SIGHUP did not open a new log file"
        post_on_new_connections(server, "after", 10)
        assert len(wait_for_line(log_file, '"POST /events" 200', count=10)) == 10
        assert len(wait_for_line(rotated, '"POST /events" 200')) == 1
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert server.stop() == 0
        assert wait_for_line(log_file, "Finished server process")

    def test_no_process_living_until_the_server_exits_holds_the_log_pipe(
        self, serve: Callable[..., RunningServer], tmp_path: Path
    ) -> None:
        """With workers, multiprocessing's resource tracker lives until the server exits. If
        it wrote to the log's pipe, the exit would wait out the log's drain (5 s) for it."""
        server = serve("--log-file", str(tmp_path / "qlevents.log"), "--workers", "2")
        assert server.process is not None
        pipe = os.readlink(f"/proc/{server.process.pid}/fd/2")
        assert pipe.startswith("pipe:")
        trackers = [
            pid
            for pid in child_pids(server.process.pid)
            if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(trackers) == 1
        assert os.readlink(f"/proc/{trackers[0]}/fd/2") != pipe

    def test_sighup_without_a_log_file_leaves_the_server_running(
        self, server: RunningServer
    ) -> None:
        """Without --log-file there is nothing to reopen: SIGHUP does not stop the server."""
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        server.post([view(server.client_key)])
        assert server.wait_for_log('"POST /events" 200')
        assert httpx.get(f"{server.url}/healthz").status_code == 200

    def test_a_log_file_that_cannot_be_opened_is_an_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A log file in a missing directory: an error naming it, before serving."""
        missing = tmp_path / "no-such-dir" / "qlevents.log"
        code = main(
            ["serve", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()),
             "--log-file", str(missing)]
        )  # fmt: skip
        assert code == 1
        err = capsys.readouterr().err
        assert f"Error: cannot open the log file {missing}" in err


class TestProbesInTheAccessLog:
    def test_probes_are_left_out_by_default(self, server: RunningServer) -> None:
        """GET /healthz and /readyz answered 200 log nothing; the requests around them do."""
        httpx.get(f"{server.url}/healthz")
        httpx.get(f"{server.url}/readyz")
        httpx.get(f"{server.url}/openapi.json")
        assert server.wait_for_log('"GET /openapi.json" 200')
        assert not server.wait_for_log("/healthz", timeout=0)
        assert not server.wait_for_log("/readyz", timeout=0)

    def test_a_failed_probe_is_logged(self, server: RunningServer) -> None:
        """An answer of 400 or more at a probe's path is logged."""
        httpx.post(f"{server.url}/healthz")
        assert server.wait_for_log('"POST /healthz" 404')

    def test_access_log_probes_logs_them(self, serve: Callable[..., RunningServer]) -> None:
        """With --access-log-probes every probe has its line."""
        server = serve("--access-log-probes")
        httpx.get(f"{server.url}/readyz")
        assert server.wait_for_log('"GET /readyz" 200')
        assert server.wait_for_log('"GET /healthz" 200')  # the start-up check's probes
