"""Imports point down: the SDK never imports the command line; ``send`` needs no server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path


def run_python(source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` in a fresh interpreter, so ``sys.modules`` holds only what it imported."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


SDK_ONLY = """
import sys

import qlevents
import qlevents.client
import qlevents.testing
from qlevents import AsyncClient, Client

print(sorted(m for m in sys.modules if m == "qlevents.cli" or m.startswith("qlevents.cli.")))
"""

SEND_WITHOUT_SERVER = """
import sys

SERVER = ("qlevents.server", "qlevents.store", "uvicorn", "prometheus_client", "starlette")

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(SERVER):
            raise ImportError(f"blocked in this test: {name}")
        return None

sys.meta_path.insert(0, Blocker())

from qlevents.cli import main

code = main(["send", sys.argv[1], "--endpoint", "http://127.0.0.1:9/events"])
print(code, sorted(m for m in sys.modules if m.startswith(SERVER)))
"""


class TestImportDirection:
    def test_the_sdk_does_not_import_the_command_line(self) -> None:
        """Importing qlevents, qlevents.client and qlevents.testing loads no qlevents.cli module."""
        done = run_python(SDK_ONLY)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "[]\n"

    def test_send_runs_without_the_server(self, tmp_path: Path) -> None:
        """With the server and the store unimportable, ``qlevents send`` checks and reports."""
        path = tmp_path / "events.json"
        path.write_text(json.dumps([{"event": "view"}]))
        done = run_python(SEND_WITHOUT_SERVER, str(path))
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "1 []"
        assert "0 processed, 1 failed (0 requests)." in done.stdout
