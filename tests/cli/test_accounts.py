"""``qlevents accounts``: add, list, show, disable, enable, move, and the mistakes it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import RunCli


class TestAccounts:
    def test_add_prints_key_and_endpoint(self, tmp_path: Path, cli: RunCli) -> None:
        """accounts add prints the new client key and the endpoint it is homed on."""
        code, out, _ = cli("accounts", "add", "Shop A", "--data-dir", str(tmp_path))
        assert code == 0
        assert "client_key:  qlk_" in out and "endpoint:    http://127.0.0.1:8080/events" in out

    def test_json_output_round_trips(self, tmp_path: Path, cli: RunCli) -> None:
        """--json prints objects with name, client_key, status and endpoint."""
        data = ["--data-dir", str(tmp_path), "--json"]
        _, out, _ = cli("accounts", "add", "shop", *data)
        added = json.loads(out)
        assert {"name", "client_key", "status", "endpoint"} <= set(added)
        _, out, _ = cli("accounts", "list", *data)
        assert json.loads(out) == [added]
        _, out, _ = cli("accounts", "show", added["client_key"], *data)
        assert json.loads(out) == added

    def test_disable_enable_and_move(self, tmp_path: Path, cli: RunCli) -> None:
        """disable, enable and move change what show reports."""
        data = ["--data-dir", str(tmp_path), "--json"]
        _, out, _ = cli("accounts", "add", "shop", *data)
        key = json.loads(out)["client_key"]
        _, out, _ = cli("accounts", "disable", key, *data)
        assert json.loads(out)["status"] == "disabled"
        _, out, _ = cli("accounts", "enable", key, *data)
        assert json.loads(out)["status"] == "active"
        _, out, _ = cli("accounts", "move", key, "--endpoint", "https://eu.example/events", *data)
        assert json.loads(out)["endpoint"] == "https://eu.example/events"

    def test_data_dir_from_the_environment(
        self, tmp_path: Path, cli: RunCli, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """QLEVENTS_DATA_DIR is used when --data-dir is not given."""
        monkeypatch.setenv("QLEVENTS_DATA_DIR", str(tmp_path / "env"))
        cli("accounts", "add", "shop")
        assert (tmp_path / "env" / "accounts.sqlite3").exists()

    def test_empty_list_says_how_to_start(self, tmp_path: Path, cli: RunCli) -> None:
        """An empty book tells the user the next command to run."""
        _, out, _ = cli("accounts", "list", "--data-dir", str(tmp_path))
        assert "qlevents accounts add NAME" in out


class TestMistakes:
    def test_unknown_key_is_an_error_not_a_traceback(self, tmp_path: Path, cli: RunCli) -> None:
        """A refused operation prints Error: ... on stderr and exits 1."""
        code, out, err = cli("accounts", "show", "qlk_nope", "--data-dir", str(tmp_path))
        assert code == 1 and out == ""
        assert err.startswith("Error: no account has the client key")

    def test_bad_endpoint_url(self, tmp_path: Path, cli: RunCli) -> None:
        """A non-http(s) endpoint is refused with a message naming what was given."""
        code, _, err = cli(
            "accounts", "add", "x", "--endpoint", "evt.example", "--data-dir", str(tmp_path)
        )
        assert code == 1 and "absolute http(s) URL" in err and "evt.example" in err

    def test_usage_errors_exit_2(self, cli: RunCli) -> None:
        """A missing argument is a usage error: exit 2 with Error: on stderr."""
        code, _, err = cli("accounts", "show")
        assert code == 2 and "Error:" in err

    def test_a_rate_that_is_not_a_number_is_a_usage_error(
        self, tmp_path: Path, cli: RunCli
    ) -> None:
        """limit --rate x: exit 2, and the message names the option and what was given."""
        code, _, err = cli(
            "accounts", "limit", "qlk_any", "--rate", "x", "--data-dir", str(tmp_path)
        )
        assert code == 2
        assert err == "Error: --rate must be a number; got 'x'\n"


class TestNamesAndKeys:
    def test_an_account_is_found_by_its_name(self, tmp_path: Path, cli: RunCli) -> None:
        """show, disable, limit and move take a name (any case) as well as a client key."""
        data = ["--data-dir", str(tmp_path), "--json"]
        _, out, _ = cli("accounts", "add", "Shop A", *data)
        key = json.loads(out)["client_key"]
        _, out, _ = cli("accounts", "show", "Shop A", *data)
        assert json.loads(out)["client_key"] == key
        _, out, _ = cli("accounts", "disable", "shop a", *data)
        assert json.loads(out)["status"] == "disabled"
        _, out, _ = cli("accounts", "limit", "Shop A", "--rate", "5", *data)
        assert json.loads(out)["rate_limit"] == 5.0

    def test_a_name_several_accounts_share_is_refused_with_their_keys(
        self, tmp_path: Path, cli: RunCli
    ) -> None:
        """Two accounts named alike: exit 1, nothing changed, both keys listed to choose from."""
        data = ["--data-dir", str(tmp_path), "--json"]
        keys = [json.loads(cli("accounts", "add", "Shop", *data)[1])["client_key"] for _ in "ab"]
        code, out, err = cli("accounts", "disable", "Shop", *data)
        assert code == 1 and out == ""
        assert err.startswith("Error: 2 accounts are named 'Shop'; give the client key of one:")
        assert all(key in err for key in keys)
        _, out, _ = cli("accounts", "list", *data)
        assert {a["status"] for a in json.loads(out)} == {"active"}

    def test_what_was_typed_is_echoed_when_nothing_matches(
        self, tmp_path: Path, cli: RunCli
    ) -> None:
        """An unknown name or key is quoted back whole, as typed."""
        cli("accounts", "add", "Shop A", "--data-dir", str(tmp_path))
        code, _, err = cli("accounts", "show", "qlk_typo_0123456789", "--data-dir", str(tmp_path))
        assert code == 1
        assert "'qlk_typo_0123456789'" in err
        _, _, err = cli("accounts", "enable", "Shop B", "--data-dir", str(tmp_path))
        assert err.startswith("Error: no account has the client key or name 'Shop B'")


class TestReadingCreatesNothing:
    @pytest.mark.parametrize(
        "argv",
        [
            ["accounts", "list"],
            ["accounts", "show", "shop"],
            ["accounts", "disable", "shop"],
            ["events", "export"],
            ["events", "prune", "--before", "2026-01-01"],
            ["backup", "somewhere"],
        ],
    )
    def test_a_mistyped_data_dir_is_an_error(
        self, tmp_path: Path, cli: RunCli, argv: list[str]
    ) -> None:
        """A data directory that does not exist is reported, not created."""
        typo = tmp_path / "qlevents-dta"
        code, out, err = cli(*argv, "--data-dir", str(typo))
        assert code == 1 and out == ""
        assert err == f"Error: there is no data directory at {typo}; is --data-dir right?\n"
        assert not typo.exists() and not (tmp_path / "somewhere").exists()

    def test_listing_an_empty_directory_creates_no_book(self, tmp_path: Path, cli: RunCli) -> None:
        """accounts list and show in a directory without a book leave it empty."""
        cli("accounts", "list", "--data-dir", str(tmp_path))
        cli("accounts", "show", "shop", "--data-dir", str(tmp_path))
        assert list(tmp_path.iterdir()) == []

    def test_the_data_dir_may_come_from_the_config_file(self, tmp_path: Path, cli: RunCli) -> None:
        """Commands on the data directory read data_dir from --config like serve does."""
        config = tmp_path / "qlevents.toml"
        config.write_text(f'data_dir = "{tmp_path / "srv"}"\n')
        cli("accounts", "add", "shop", "--config", str(config))
        code, out, _ = cli("accounts", "show", "shop", "--config", str(config))
        assert code == 0 and "name:        shop" in out
        assert (tmp_path / "srv" / "accounts.sqlite3").exists()
