"""``qlevents serve`` starting up: settings from every source, the port, the data directory's
lock, accounts (a demo account only when asked for), and how to sign in to the dashboard."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from qlevents.accounts import AccountBook
from tests.support import RunningServer, free_port, view


def serve(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``qlevents serve ARGV`` in a process of its own (it serves if nothing stops it)."""
    return subprocess.run(
        [sys.executable, "-m", "qlevents", "serve", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestRefusedBeforeAnythingIsPrinted:
    def test_a_taken_port_says_so_and_what_to_do(self, tmp_path: Path) -> None:
        """A port another program listens on: exit 1, how to choose another, nothing else."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = serve("--port", str(port), "--data-dir", str(tmp_path / "data"))
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr == (
            f"Error: port {port} on 127.0.0.1 is in use (another qlevents serve, or another"
            f" program); choose a free one with --port {port + 1}; with make: make serve"
            f" PORT={port + 1}\n"
        )
        assert not (tmp_path / "data").exists()

    def test_a_second_server_on_the_same_data_directory_is_refused(
        self, server: RunningServer
    ) -> None:
        """The first server's lock: the second one exits 1 naming the first one's pid."""
        assert server.process is not None
        done = serve("--port", str(free_port()), "--data-dir", str(server.data_dir))
        assert done.returncode == 1 and done.stdout == ""
        assert f"another qlevents serve (pid {server.process.pid})" in done.stderr
        assert server.post([view(server.client_key)]).json()["processed"]  # the first serves on

    def test_the_admin_port_must_differ_from_the_port_as_they_were_given(
        self, tmp_path: Path
    ) -> None:
        """Settings that contradict each other are named as the user gave them."""
        config = tmp_path / "q.toml"
        config.write_text("admin_port = 9000\n")
        done = serve("--config", str(config), "--port", "9000", "--admin-token", "t" * 24)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr == f"Error: admin_port in {config} must differ from --port\n"

    def test_a_bad_setting_is_named(self, tmp_path: Path) -> None:
        """A variable's bad value stops the start with the variable's name."""
        done = subprocess.run(
            [sys.executable, "-m", "qlevents", "serve", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "QLEVENTS_MAX_EVENTS": "0"},
        )
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr == "Error: QLEVENTS_MAX_EVENTS='0': Expected `int` >= 1\n"


class TestAccountsAtStart:
    def test_a_plain_serve_creates_no_account_and_says_how(self, tmp_path: Path) -> None:
        """Without --demo: no account is made; the output says how to make one."""
        server = RunningServer(tmp_path / "data", free_port(), [], tmp_path / "log", demo=False)
        server.start()
        try:
            log = server.log()
        finally:
            server.stop()
        assert f'qlevents accounts add "My shop" --data-dir {tmp_path / "data"}' in log
        assert "qlk_" not in log
        book = AccountBook(tmp_path / "data", readonly=True)
        try:
            assert book.all() == []
        finally:
            book.close()

    def test_demo_creates_an_account_on_first_run_only(
        self, serve: Callable[..., RunningServer]
    ) -> None:
        """--demo on an empty data directory makes 'demo'; on the next start, nothing."""
        server = serve()  # RunningServer passes --demo
        assert server.log().count("First run: created the account 'demo'.") == 1
        server.restart()
        assert server.log().count("First run") == 1


def user_commands(log: str) -> list[str]:
    """The ``users add`` commands the start-up printed, as printed."""
    return [line.strip() for line in log.splitlines() if " users add " in line]


def signs_in(url: str, email: str, password: str) -> bool:
    """Whether the dashboard's sign-in form takes ``email`` and ``password``."""
    with httpx.Client(base_url=url) as client:
        form = client.get("/ui/signin").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        answer = client.post(
            "/ui/signin", data={"csrf": csrf.group(1), "email": email, "password": password}
        )
        return answer.status_code == 303


class TestHowToSignIn:
    def test_a_fresh_demo_prints_the_dashboard_and_commands_that_work(
        self, serve: Callable[..., RunningServer]
    ) -> None:
        """make serve's first run: the dashboard's URL, then an operator's and a member of
        demo's commands; run as printed, each makes a user who signs in."""
        server = serve()  # RunningServer passes --demo
        log = server.log()
        assert f"Dashboard: {server.url}/ui/ (no user yet)\n" in log
        operator, member = user_commands(log)
        assert "--operator --password-stdin" in operator
        assert f"--account {server.client_key} --password-stdin" in member
        for command in (operator, member):
            assert f"--data-dir {server.data_dir}" in command
            done = subprocess.run(
                shlex.split(command), input="a long password\n", capture_output=True, text=True,
                timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        assert signs_in(server.url, "you@example.com", "a long password")
        assert signs_in(server.url, "dev@shop.example", "a long password")

    def test_once_there_is_a_user_only_the_dashboard_is_named(
        self, serve: Callable[..., RunningServer]
    ) -> None:
        """The next start prints where the dashboard is, and no command."""
        server = serve()
        operator, _ = user_commands(server.log())
        subprocess.run(shlex.split(operator), input="a long password\n", text=True, check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        server.log_path.write_text("")
        server.restart()
        assert f"Dashboard: {server.url}/ui/\n" in server.log()
        assert user_commands(server.log()) == []

    def test_without_demo_only_an_operator_is_offered(self, tmp_path: Path) -> None:
        """No account to be a member of: the operator's command alone."""
        server = RunningServer(tmp_path / "data", free_port(), [], tmp_path / "log", demo=False)
        server.start()
        try:
            log = server.log()
        finally:
            server.stop()
        commands = user_commands(log)
        assert len(commands) == 1 and "--operator" in commands[0]


class TestSettingsReachTheServer:
    def test_a_config_file_under_a_variable_under_an_option(
        self, serve: Callable[..., RunningServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """max_events from the file is overridden by the variable; the server enforces it."""
        config = tmp_path / "qlevents.toml"
        config.write_text("max_events = 2\nmax_body_bytes = 100000\n")
        monkeypatch.setenv("QLEVENTS_MAX_EVENTS", "3")
        server = serve("--config", str(config))
        key = server.client_key
        assert server.post([view(key)] * 3).status_code == 200
        assert server.post([view(key)] * 4).status_code == 413
        big = view(key, permalink="https://x.example/" + "a" * 100_000)
        assert server.post([big]).status_code == 413  # max_body_bytes, from the file
