"""``qlevents send FILE``: a backfill in batches, with a summary of what was stored."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from qlevents.cli import main
from qlevents.cli.send import _Progress
from tests.client.conftest import product_ids
from tests.support import RunningServer, conversion, free_port, view


def write_ndjson(path: Path, events: list[object]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


class TestSendCommand:
    def test_ndjson_backfill_is_stored_in_batches(
        self,
        shared_server: RunningServer,
        account: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """2,500 events in batches of 1,000: all stored, a summary printed, exit 0."""
        key = account
        events = [view(key, product_id=f"p{i}") for i in range(2500)]
        path = write_ndjson(tmp_path / "events.ndjson", events)
        code = main(
            ["send", str(path), "--endpoint", shared_server.events_url, "--batch-size", "1000"]
        )
        out = capsys.readouterr().out
        assert code == 0
        assert "2500 processed, 0 failed (3 requests)." in out
        assert len(shared_server.stored(account)) == 2500

    def test_json_array_from_stdin_with_a_default_key(
        self,
        shared_server: RunningServer,
        account: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """'-' reads a JSON array from stdin; --client-key fills events that have none."""
        events = [conversion("x", product_id="c1"), conversion("x", product_id="c2")]
        for event in events:
            del event["client_key"]
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(json.dumps(events).encode())))
        code = main(["send", "-", "--endpoint", shared_server.events_url, "--client-key", account])
        assert code == 0, capsys.readouterr().err
        assert product_ids(shared_server.stored(account)) == ["c1", "c2"]

    def test_failures_are_summarised_with_reasons(
        self,
        shared_server: RunningServer,
        account: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Broken events (caught locally) and refused ones (by the server) are counted by code."""
        key = account
        events = [view(key), view(key, price=-1), view("qlk_unknown"), "not an event"]
        path = write_ndjson(tmp_path / "events.ndjson", events)
        code = main(["send", str(path), "--endpoint", shared_server.events_url])
        out = capsys.readouterr().out
        assert code == 1
        assert "1 processed, 3 failed (1 request)." in out
        assert "out_of_range" in out and "unknown_client_key" in out and "not_an_object" in out
        assert len(shared_server.stored(account)) == 1
        assert shared_server.stored("qlk_unknown") == []

    def test_a_bad_event_is_reported_by_its_line(
        self,
        shared_server: RunningServer,
        account: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """NDJSON: each failure by its line number, blank lines counted, refused ones too."""
        key = account
        path = tmp_path / "events.ndjson"
        lines = [view(key), view(key, price=-1), None, view("qlk_unknown"), view(key, price=-2)]
        path.write_text("".join("\n" if e is None else json.dumps(e) + "\n" for e in lines))
        code = main(["send", str(path), "--endpoint", shared_server.events_url])
        out = capsys.readouterr().out.splitlines()
        assert code == 1
        assert out[0] == "1 processed, 3 failed (1 request)."
        assert out[1].split() == ["2", "out_of_range:", "line", "2:", "price", *out[1].split()[5:]]
        assert out[1].endswith("(also line 5)")
        assert out[2].split()[:4] == ["1", "unknown_client_key:", "line", "4:"]

    def test_a_bad_event_of_an_array_is_reported_by_index_and_line(
        self,
        shared_server: RunningServer,
        account: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A JSON array: the element's index and the line it starts on."""
        path = tmp_path / "events.json"
        good, bad = json.dumps(view(account)), json.dumps(view("k", price=-1))
        path.write_text(f"[\n  {good},\n\n  {good}, {bad},\n  [1,\n2],\n  {good}\n]\n")
        code = main(["send", str(path), "--endpoint", shared_server.events_url])
        out = capsys.readouterr().out
        assert code == 1
        assert out.startswith("3 processed, 2 failed (1 request).\n")
        assert "  out_of_range: index 2 at line 4: price must be" in out
        assert "  not_an_object: index 3 at line 5: an event must be a JSON object\n" in out

    def test_a_line_that_is_not_json_is_named(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A broken NDJSON line stops the send before anything is sent, naming the line."""
        path = tmp_path / "events.ndjson"
        path.write_text(json.dumps(view("k")) + "\n" + '{"event": "view",\n')
        code = main(["send", str(path), "--endpoint", "http://127.0.0.1:9/events"])
        assert code == 1
        assert capsys.readouterr().err.startswith(
            f"Error: {path} is neither a JSON array nor NDJSON (one event per line): line 2: "
        )

    def test_running_the_same_backfill_twice_stores_it_once(
        self,
        shared_server: RunningServer,
        account: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Batch keys derive from their bodies: a re-run within 24 h is a replay."""
        events = [view(account, product_id=f"p{i}") for i in range(10)]
        path = write_ndjson(tmp_path / "events.ndjson", events)
        assert main(["send", str(path), "--endpoint", shared_server.events_url]) == 0
        assert main(["send", str(path), "--endpoint", shared_server.events_url]) == 0
        assert len(shared_server.stored(account)) == 10

    def test_unreachable_server_is_an_error_not_a_traceback(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No server: 'Error: ...' on stderr, exit 1, and how to resume."""
        path = write_ndjson(tmp_path / "events.ndjson", [view("k")])
        url = f"http://127.0.0.1:{free_port()}/events"
        code = main(["send", str(path), "--endpoint", url, "--retry-budget", "0.3"])
        err = capsys.readouterr().err
        assert code == 1
        assert err.startswith("Error: ") and "Re-run the same command" in err
        assert "Traceback" not in err

    @pytest.mark.parametrize("size", ["0", "1001"])
    def test_batch_size_out_of_range_is_a_usage_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
    ) -> None:
        """--batch-size outside 1..1000 (the API's limit): exit 2 before anything is read."""
        code = main(["send", str(tmp_path / "missing.ndjson"), "--batch-size", size])
        assert code == 2
        assert capsys.readouterr().err == "Error: --batch-size must be from 1 to 1000\n"

    @pytest.mark.parametrize(
        ("content", "says"),
        [(None, "cannot read"), ("{not json", "neither a JSON array nor NDJSON")],
    )
    def test_unreadable_file_is_an_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, says: str
    ) -> None:
        """A missing or malformed file: 'Error: ...', exit 1."""
        path = tmp_path / "events.ndjson"
        if content is not None:
            path.write_text(content)
        code = main(["send", str(path), "--endpoint", "http://127.0.0.1:9/events"])
        assert code == 1
        assert says in capsys.readouterr().err


class TestEndpoint:
    def test_without_an_endpoint_nothing_is_read_or_sent(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No --endpoint and no QLEVENTS_ENDPOINT: exit 2, saying both ways; no default."""
        monkeypatch.delenv("QLEVENTS_ENDPOINT", raising=False)
        code = main(["send", str(tmp_path / "not-read.ndjson"), "--client-key", "k"])
        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith("Error: no endpoint: give --endpoint URL or set QLEVENTS_ENDPOINT")
        assert "no default server" in err

    def test_the_endpoint_from_the_environment(
        self,
        server: RunningServer,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """QLEVENTS_ENDPOINT stands in for --endpoint."""
        monkeypatch.setenv("QLEVENTS_ENDPOINT", server.events_url)
        path = write_ndjson(tmp_path / "events.ndjson", [view(server.client_key)])
        assert main(["send", str(path)]) == 0
        assert "1 processed, 0 failed (1 request)." in capsys.readouterr().out
        assert len(server.stored()) == 1


class TestProgress:
    def test_bar_on_a_terminal_silence_otherwise(self) -> None:
        """The progress bar is drawn only when stderr is a terminal."""

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        terminal, pipe = Terminal(), io.StringIO()
        for stream in (terminal, pipe):
            progress = _Progress(10, stream)
            progress.show(5)
            progress.end()
        assert terminal.getvalue().startswith("\r[###############...............] 5/10 events")
        assert pipe.getvalue() == ""
