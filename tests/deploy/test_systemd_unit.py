"""deploy/systemd/qlevents.service checked by systemd's own tools (``systemd-analyze verify``
and ``security --offline``; neither needs systemd running), and its environment file against
the options of ``qlevents serve``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "qlevents.service"
ENVIRONMENT = DEPLOY / "systemd" / "qlevents.env"
INSTALLED = "/opt/qlevents/venv/bin/qlevents"
#: The highest exposure `systemd-analyze security` may give the unit (0 safest, 10 worst;
#: below 2 it calls a service "OK").
EXPOSURE = 2.0


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian: the systemd package)")
    return found


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit, starting this checkout's ``qlevents`` where it says /opt/qlevents (verify
    checks that the program exists)."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} serve " in text
    qlevents = Path(sys.executable).with_name("qlevents")
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED, str(qlevents)))
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


class TestEnvironmentFile:
    def test_every_variable_is_an_option_of_serve(self) -> None:
        """Each QLEVENTS_NAME in the file (set or commented out) is serve's --name."""
        serve_help = subprocess.run(
            [sys.executable, "-m", "qlevents", "serve", "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        names = re.findall(r"^#?QLEVENTS_([A-Z_]+)=", ENVIRONMENT.read_text(), re.MULTILINE)
        assert len(names) >= 5
        for name in names:
            option = "--" + name.lower().replace("_", "-")
            assert re.search(rf"{option}\b", serve_help), f"serve has no {option}"
