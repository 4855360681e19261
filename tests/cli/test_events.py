"""``qlevents events``: export as NDJSON with positions, read on from a position, the kept
failed events (``--failed``), prune."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from qlevents.cli.events import parse_cutoff
from tests.cli.conftest import RunCli
from tests.support import RunningServer, view


def export(cli: RunCli, server: RunningServer, *argv: str) -> list[dict[str, Any]]:
    code, out, err = cli("events", "export", "--data-dir", str(server.data_dir), *argv)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


class TestExport:
    def test_writes_stored_events_as_ndjson(self, server: RunningServer, cli: RunCli) -> None:
        """export writes one JSON object per stored event, with the API's field names."""
        other = server.add_account("other")
        server.restart()
        processed = server.post([view(server.client_key), view(other)]).json()["processed"]
        lines = export(cli, server)
        assert [{k: v for k, v in line.items() if k != "position"} for line in lines] == processed
        lines = export(cli, server, "--client-key", other)
        assert [line["client_key"] for line in lines] == [other]

    def test_each_line_starts_with_the_events_position(
        self, server: RunningServer, cli: RunCli
    ) -> None:
        """ "position" is each object's first field; positions increase down the file."""
        server.post([view(server.client_key, product_id=f"p{i}") for i in range(3)])
        _, out, _ = cli("events", "export", "--data-dir", str(server.data_dir))
        assert all(line.startswith('{"position":') for line in out.splitlines())
        positions = [json.loads(line)["position"] for line in out.splitlines()]
        assert positions == sorted(set(positions)) and len(positions) == 3

    def test_after_resumes_from_the_last_position_read(
        self, server: RunningServer, cli: RunCli
    ) -> None:
        """A reader that saved the last position gets exactly the events stored since."""
        key = server.client_key
        server.post([view(key, product_id="a"), view(key, product_id="b")])
        first = export(cli, server)
        last = str(first[-1]["position"])
        assert export(cli, server, "--after", last) == []
        server.post([view(key, product_id="c")])
        later = export(cli, server, "--after", last)
        assert [e["product_id"] for e in later] == ["c"]
        assert export(cli, server, "--after", str(first[0]["position"]))[0]["product_id"] == "b"

    def test_export_without_a_store(self, tmp_path: Path, cli: RunCli) -> None:
        """Exporting from a directory with no store says so."""
        code, _, err = cli("events", "export", "--data-dir", str(tmp_path))
        assert code == 1 and "no event store" in err

    def test_a_negative_position_is_a_usage_error(self, tmp_path: Path, cli: RunCli) -> None:
        """--after -1: exit 2, naming what was given."""
        code, _, err = cli("events", "export", "--after", "-1", "--data-dir", str(tmp_path))
        assert code == 2 and err == "Error: --after must be a position (0 or more); got -1\n"


def export_failed(
    cli: RunCli,
    server: RunningServer,
    *argv: str,
    until: Callable[[list[dict[str, Any]]], bool] = bool,
) -> list[dict[str, Any]]:
    """``events export --failed``, once its lines satisfy ``until`` (the server writes what
    it counted every --activity-flush-seconds)."""
    deadline = time.monotonic() + 10
    while True:
        lines = export(cli, server, "--failed", *argv)
        if until(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def prices(lines: list[dict[str, Any]]) -> list[str]:
    return [line["event"]["price"] for line in lines]


#: The ledger written every 0.1 s, so that the tests wait less.
QUICK_LEDGER = ("--activity-flush-seconds", "0.1")


class TestExportFailed:
    def test_each_failed_event_as_sent_with_its_errors_and_when_it_came(
        self, serve: Callable[..., RunningServer], cli: RunCli
    ) -> None:
        """One line per failed event, oldest first: received_at, account, event, errors."""
        server = serve(*QUICK_LEDGER)
        key = server.client_key
        before = datetime.now(UTC)
        server.post([view(key, price="12"), view(key), view(key, product_id=7)])
        lines = export_failed(cli, server, until=lambda lines: len(lines) == 2)
        assert [line["event"] for line in lines] == [view(key, price="12"), view(key, product_id=7)]
        assert [e["code"] for e in lines[0]["errors"]] == ["invalid_type"]
        assert lines[0]["errors"][0]["field"] == "price"
        received = datetime.fromisoformat(lines[0]["received_at"])
        assert before - timedelta(seconds=1) <= received <= datetime.now(UTC)
        assert list(lines[0]) == ["received_at", "account", "event", "errors"]

    def test_one_account_by_name_or_one_key(
        self, serve: Callable[..., RunningServer], cli: RunCli
    ) -> None:
        """--account takes the account's name; --client-key any key, one no account has too."""
        server = serve(*QUICK_LEDGER)
        other = server.add_account("other")
        server.restart()
        server.post([view(server.client_key, price="1"), view(other, price="2")])
        server.post([view("qlk_nobody", price="3")])
        everything = export_failed(cli, server, until=lambda lines: len(lines) == 3)
        assert prices(everything) == ["1", "2", "3"]
        by_name = export_failed(cli, server, "--account", "other")
        assert prices(by_name) == ["2"]
        assert by_name[0]["account"] == everything[1]["account"] != everything[0]["account"]
        unknown = export_failed(cli, server, "--client-key", "qlk_nobody")
        assert [(line["event"]["price"], line["account"]) for line in unknown] == [("3", None)]
        assert [e["code"] for e in unknown[0]["errors"]] == ["invalid_type", "unknown_client_key"]

    def test_the_server_keeps_the_newest_failed_keep_per_account(
        self, serve: Callable[..., RunningServer], cli: RunCli, tmp_path: Path
    ) -> None:
        """failed_keep from the --config file bounds what is kept: the newest, per account."""
        config = tmp_path / "qlevents.toml"
        config.write_text("failed_keep = 2\nactivity_flush_seconds = 0.1\n")
        server = serve("--config", str(config))
        key = server.client_key
        for price in ("a", "b", "c", "d"):
            server.post([view(key, price=price)])
        server.post([view("qlk_nobody", price="e")])  # another "account": its own bound
        # Posted last, so written last: once it is there, the others have been written.
        everything = export_failed(cli, server, until=lambda lines: "e" in prices(lines))
        assert prices(everything) == ["c", "d", "e"]
        assert prices(export_failed(cli, server, "--account", "demo")) == ["c", "d"]

    def test_a_directory_no_server_ran_in_has_none(self, tmp_path: Path, cli: RunCli) -> None:
        """No ledger yet: nothing is written, nothing is created, exit 0."""
        code, out, err = cli("events", "export", "--failed", "--data-dir", str(tmp_path))
        assert (code, out, err) == (0, "", "")
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize(
        ("argv", "says"),
        [
            (["--failed", "--after", "3"], "--after reads stored events by position; failed"
             " events have none"),
            (["--failed", "--account", "demo", "--client-key", "qlk_x"],
             "give --account or --client-key, not both"),
            (["--account", "demo"], "--account goes with --failed; stored events are chosen by"
             " --client-key"),
        ],
    )  # fmt: skip
    def test_options_that_do_not_go_together_are_usage_errors(
        self, tmp_path: Path, cli: RunCli, argv: list[str], says: str
    ) -> None:
        """Exit 2 with what to do instead."""
        code, out, err = cli("events", "export", *argv, "--data-dir", str(tmp_path))
        assert (code, out, err) == (2, "", f"Error: {says}\n")


class TestPrune:
    def test_removes_what_was_received_before_and_keeps_positions(
        self, server: RunningServer, cli: RunCli
    ) -> None:
        """Beside the running server: the old events go, the rest keep their positions."""
        key = server.client_key
        server.post([view(key, product_id=f"old{i}") for i in range(3)])
        server.post([view(key, product_id="kept")])
        before = export(cli, server)
        data = ["--data-dir", str(server.data_dir)]
        code, out, _ = cli("events", "prune", "--before", "2000-01-01", *data)
        assert code == 0
        assert out == "No event was received before 2000-01-01T00:00:00Z: nothing pruned.\n"
        cutoff = before[-1]["received_at"]  # an RFC 3339 time: the kept event's own
        code, out, _ = cli("events", "prune", "--before", cutoff, "--vacuum", *data)
        assert code == 0
        assert out.startswith(f"Pruned 3 events received before {cutoff} (positions up to")
        assert f"(positions up to {before[2]['position']}); " in out
        assert out.endswith(" bytes freed.\n")
        assert export(cli, server) == before[3:]
        server.post([view(key, product_id="new")])
        assert [
            e["product_id"] for e in export(cli, server, "--after", str(before[3]["position"]))
        ] == ["new"]

    def test_positions_are_not_reused_after_the_whole_log_is_pruned(
        self, server: RunningServer, cli: RunCli
    ) -> None:
        """A reader that saved the last position must see the events stored after a prune."""
        key = server.client_key
        server.post([view(key, product_id=f"p{i}") for i in range(3)])
        last = export(cli, server)[-1]["position"]
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
        cli("events", "prune", "--before", tomorrow, "--data-dir", str(server.data_dir))
        server.post([view(key, product_id="new")])
        assert [e["product_id"] for e in export(cli, server, "--after", str(last))] == ["new"]

    def test_a_retry_of_a_pruned_request_is_still_a_replay(
        self, server: RunningServer, cli: RunCli
    ) -> None:
        """The idempotency claims outlive the pruned events: a retry stores nothing again."""
        body, headers = [view(server.client_key)], {"Idempotency-Key": "order-1"}
        first = server.post(body, headers=headers).json()
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
        cli("events", "prune", "--before", tomorrow, "--data-dir", str(server.data_dir))
        kept = export(cli, server)  # the newest event stays
        assert server.post(body, headers=headers).json() == first
        assert export(cli, server) == kept

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-11-01", "2026-11-01T00:00:00+00:00"),
            ("2026-11-01T12:30:00Z", "2026-11-01T12:30:00+00:00"),
            ("2026-11-01T12:30:00+02:00", "2026-11-01T10:30:00+00:00"),
        ],
    )
    def test_dates_and_times_are_read_in_utc(self, text: str, expected: str) -> None:
        """A date is midnight UTC; a time with an offset is converted to UTC."""
        assert parse_cutoff(text).isoformat() == expected

    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ("yesterday", "is neither a date (2026-11-01) nor an RFC 3339 time"),
            ("2026-11-01T12:00:00", "has no time zone: add Z (UTC) or an offset"),
        ],
    )
    def test_a_bad_date_is_a_usage_error(
        self, tmp_path: Path, cli: RunCli, text: str, says: str
    ) -> None:
        """A date it cannot read, or a time without its zone: exit 2, echoing what was typed."""
        code, _, err = cli("events", "prune", "--before", text, "--data-dir", str(tmp_path))
        assert code == 2
        assert err.startswith(f"Error: --before {text!r} ") and says in err
