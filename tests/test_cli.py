"""The qlevents command line: accounts, export, and how it reports mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlevents.cli import main
from tests.support import RunningServer, view


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class TestAccounts:
    def test_add_prints_key_and_endpoint(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """accounts add prints the new client key and the endpoint it is homed on."""
        code, out, _ = run(capsys, "accounts", "add", "Shop A", "--data-dir", str(tmp_path))
        assert code == 0
        assert "client_key:  qlk_" in out and "endpoint:    http://127.0.0.1:8080/events" in out

    def test_json_output_round_trips(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json prints objects with name, client_key, status and endpoint."""
        data = ["--data-dir", str(tmp_path), "--json"]
        _, out, _ = run(capsys, "accounts", "add", "shop", *data)
        added = json.loads(out)
        assert {"name", "client_key", "status", "endpoint"} <= set(added)
        _, out, _ = run(capsys, "accounts", "list", *data)
        assert json.loads(out) == [added]
        _, out, _ = run(capsys, "accounts", "show", added["client_key"], *data)
        assert json.loads(out) == added

    def test_disable_enable_and_move(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """disable, enable and move change what show reports."""
        data = ["--data-dir", str(tmp_path), "--json"]
        _, out, _ = run(capsys, "accounts", "add", "shop", *data)
        key = json.loads(out)["client_key"]
        _, out, _ = run(capsys, "accounts", "disable", key, *data)
        assert json.loads(out)["status"] == "disabled"
        _, out, _ = run(capsys, "accounts", "enable", key, *data)
        assert json.loads(out)["status"] == "active"
        _, out, _ = run(
            capsys, "accounts", "move", key, "--endpoint", "https://eu.example/events", *data
        )
        assert json.loads(out)["endpoint"] == "https://eu.example/events"

    def test_data_dir_from_the_environment(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """QLEVENTS_DATA_DIR is used when --data-dir is not given."""
        monkeypatch.setenv("QLEVENTS_DATA_DIR", str(tmp_path / "env"))
        run(capsys, "accounts", "add", "shop")
        assert (tmp_path / "env" / "accounts.sqlite3").exists()

    def test_empty_list_says_how_to_start(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An empty book tells the user the next command to run."""
        _, out, _ = run(capsys, "accounts", "list", "--data-dir", str(tmp_path))
        assert "qlevents accounts add NAME" in out


class TestMistakes:
    def test_unknown_key_is_an_error_not_a_traceback(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A refused operation prints Error: ... on stderr and exits 1."""
        code, out, err = run(capsys, "accounts", "show", "qlk_nope", "--data-dir", str(tmp_path))
        assert code == 1 and out == ""
        assert err.startswith("Error: no account has the client key")

    def test_bad_endpoint_url(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A non-http(s) endpoint is refused with a message naming what was given."""
        code, _, err = run(
            capsys, "accounts", "add", "x", "--endpoint", "evt.example", "--data-dir", str(tmp_path)
        )
        assert code == 1 and "absolute http(s) URL" in err and "evt.example" in err

    def test_usage_errors_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A missing argument is a usage error: exit 2 with Error: on stderr."""
        code, _, err = run(capsys, "accounts", "show")
        assert code == 2 and "Error:" in err

    def test_export_without_a_store(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Exporting from a directory with no store says so."""
        code, _, err = run(capsys, "events", "export", "--data-dir", str(tmp_path))
        assert code == 1 and "no event store" in err


class TestExport:
    def test_writes_stored_events_as_ndjson(
        self, server: RunningServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """export writes one JSON object per stored event, with the API's field names."""
        other = server.add_account("other")
        server.restart()
        processed = server.post([view(server.client_key), view(other)]).json()["processed"]
        code, out, _ = run(capsys, "events", "export", "--data-dir", str(server.data_dir))
        assert code == 0
        assert [json.loads(line) for line in out.splitlines()] == processed
        _, out, _ = run(
            capsys, "events", "export", "--client-key", other, "--data-dir", str(server.data_dir)
        )
        assert [json.loads(line)["client_key"] for line in out.splitlines()] == [other]
