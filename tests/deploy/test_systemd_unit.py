"""The systemd units in deploy/systemd (qlevents.service, and qlevents-nats.service for a
cluster's NATS nodes) checked by systemd's own tools (``systemd-analyze verify`` and
``security --offline``; neither needs systemd running), and their environment files
(qlevents.env, qlevents-cluster.env) against the options of ``qlevents serve``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import require_nats_server

DEPLOY = Path(__file__).parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "qlevents.service"
NATS_UNIT = DEPLOY / "systemd" / "qlevents-nats.service"
ENVIRONMENT = DEPLOY / "systemd" / "qlevents.env"
ENVIRONMENTS = [ENVIRONMENT, DEPLOY / "systemd" / "qlevents-cluster.env"]
INSTALLED = "/opt/qlevents/venv/bin/"
#: The highest exposure `systemd-analyze security` may give a unit (0 safest, 10 worst;
#: below 2 it calls a service "OK").
EXPOSURE = 2.0


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian: the systemd package)")
    return found


@pytest.fixture(params=[UNIT, NATS_UNIT], ids=lambda path: path.name)
def unit(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A unit, starting this checkout's programs where it says /opt/qlevents (verify checks
    that the program exists)."""
    path: Path = request.param
    text = path.read_text()
    program = re.search(rf"^ExecStart={re.escape(INSTALLED)}(\S+) ", text, re.MULTILINE)
    assert program, f"{path.name} does not start a program of {INSTALLED}"
    name = program[1]
    here = require_nats_server() if name == "nats-server" else Path(sys.executable).with_name(name)
    copy = tmp_path / path.name
    copy.write_text(text.replace(INSTALLED + name, str(here)))
    return copy


class TestUnit:
    def test_systemd_analyze_verify_finds_nothing(self, unit: Path) -> None:
        """No error and no warning (an unknown key, a bad value, a missing program)."""
        done = subprocess.run(
            [systemd_analyze(), "verify", str(unit)], check=False, capture_output=True, text=True
        )
        assert done.returncode == 0 and not done.stdout and not done.stderr, done.stderr

    def test_hardening_keeps_the_exposure_low(self, unit: Path) -> None:
        """systemd's own score of the sandbox stays under 2 ("OK")."""
        done = subprocess.run(
            [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
            check=False,
            capture_output=True,
            text=True,
        )
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
        assert found, done.stdout + done.stderr
        assert float(found.group(1)) < EXPOSURE, done.stdout

    def test_it_runs_serve_on_the_data_directory_it_creates(self) -> None:
        """ExecStart's --data-dir is the StateDirectory systemd creates and lets it write."""
        text = UNIT.read_text()
        assert "--data-dir /var/lib/qlevents" in text
        assert "\nStateDirectory=qlevents\n" in text and "\nProtectSystem=strict\n" in text
        assert "\nRestart=on-failure\n" in text and "\nNoNewPrivileges=yes\n" in text
        assert f"\nEnvironmentFile=/etc/qlevents/{ENVIRONMENT.name}\n" in text

    def test_a_nats_node_runs_the_shipped_configuration_and_stops_in_lame_duck_mode(
        self,
    ) -> None:
        """The NATS unit runs nats-server on the shipped file, with its store in the
        StateDirectory, and stops it with SIGUSR2 (lame duck), waiting longer than lame
        duck mode's default 2 minutes before a kill."""
        text = NATS_UNIT.read_text()
        assert " -c /etc/qlevents-nats/nats-server.conf\n" in text
        assert "\nStateDirectory=qlevents-nats\n" in text and "\nProtectSystem=strict\n" in text
        assert "\nKillSignal=SIGUSR2\n" in text
        timeout = re.search(r"^TimeoutStopSec=(\d+)s$", text, re.MULTILINE)
        assert timeout and int(timeout[1]) > 120


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=lambda path: path.name)
class TestEnvironmentFile:
    def test_every_variable_is_an_option_of_serve(self, environment: Path) -> None:
        """Each QLEVENTS_NAME in the file (set or commented out) is serve's --name."""
        serve_help = subprocess.run(
            [sys.executable, "-m", "qlevents", "serve", "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        names = re.findall(r"^#?QLEVENTS_([A-Z_]+)=", environment.read_text(), re.MULTILINE)
        assert len(names) >= 5
        for name in names:
            option = "--" + name.lower().replace("_", "-")
            assert re.search(rf"{option}\b", serve_help), f"serve has no {option}"
