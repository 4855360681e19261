"""``qlevents events export``: the stored events as NDJSON."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import RunCli
from tests.support import RunningServer, view


class TestExport:
    def test_writes_stored_events_as_ndjson(self, server: RunningServer, cli: RunCli) -> None:
        """export writes one JSON object per stored event, with the API's field names."""
        other = server.add_account("other")
        server.restart()
        processed = server.post([view(server.client_key), view(other)]).json()["processed"]
        code, out, _ = cli("events", "export", "--data-dir", str(server.data_dir))
        assert code == 0
        assert [json.loads(line) for line in out.splitlines()] == processed
        _, out, _ = cli(
            "events", "export", "--client-key", other, "--data-dir", str(server.data_dir)
        )
        assert [json.loads(line)["client_key"] for line in out.splitlines()] == [other]

    def test_export_without_a_store(self, tmp_path: Path, cli: RunCli) -> None:
        """Exporting from a directory with no store says so."""
        code, _, err = cli("events", "export", "--data-dir", str(tmp_path))
        assert code == 1 and "no event store" in err
