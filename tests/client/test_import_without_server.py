"""The SDK installs and imports without the server's dependencies."""

from __future__ import annotations

from tests.client.conftest import run_script

BLOCKED = """
import sys

BLOCKED = ("uvicorn", "prometheus_client", "qlevents.server", "qlevents.store.sqlite",
           "fastapi", "starlette", "uvloop", "httptools")

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(BLOCKED):
            raise ImportError(f"blocked in this test: {name}")
        return None

sys.meta_path.insert(0, Blocker())

import qlevents
from qlevents import AsyncClient, Client
from qlevents.testing import RecordingTransport
import qlevents.client

transport = RecordingTransport()
with Client("k", "https://evt.example/events", transport=transport) as client:
    client.view(product_id="p", price=1, permalink="https://s.example/")
    assert client.flush(5)
assert transport.events[0]["product_id"] == "p"
loaded = sorted(m for m in sys.modules if m.startswith(BLOCKED))
print("ok", loaded)
"""


class TestImportWithoutServer:
    def test_client_works_when_server_modules_cannot_be_imported(self) -> None:
        """With uvicorn, prometheus_client and qlevents.server blocked, Client still works."""
        done = run_script(BLOCKED)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok []"
