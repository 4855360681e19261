"""``qlevents config show``: every setting in effect, and where its value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import RunCli


def table(out: str) -> dict[str, tuple[str, str]]:
    """config show's rows: setting -> (value, source)."""
    rows = {}
    for line in out.splitlines()[2:]:
        name, value, source = line.split(maxsplit=2)
        rows[name] = (value, source)
    return rows


class TestShow:
    def test_each_setting_with_its_value_and_source(
        self, tmp_path: Path, cli: RunCli, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A file, a variable and an option each show as the source of what they set."""
        config = tmp_path / "qlevents.toml"
        config.write_text('workers = 2\ndata_dir = "/srv/qlevents"\nport = 9000\n')
        monkeypatch.setenv("QLEVENTS_PORT", "9100")
        code, out, err = cli("config", "show", "--config", str(config), "--rate-limit", "50")
        assert code == 0, err
        assert out.splitlines()[0] == f"config file: {config} (from --config)"
        rows = table(out)
        assert rows["workers"] == ("2", f"file {config}")
        assert rows["data_dir"] == ("/srv/qlevents", f"file {config}")
        assert rows["port"] == ("9100", "env QLEVENTS_PORT")
        assert rows["rate_limit"] == ("50.0", "option --rate-limit")
        assert rows["max_events"] == ("1000", "default")
        assert rows["endpoint_url"] == (
            "http://127.0.0.1:9100/events",
            "default (http://HOST:PORT/events)",
        )

    def test_the_dashboards_settings_are_listed(
        self, tmp_path: Path, cli: RunCli, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Key grace and the failed events' bounds show with the other settings."""
        config = tmp_path / "qlevents.toml"
        config.write_text("failed_keep = 200\n")
        monkeypatch.setenv("QLEVENTS_FAILED_DAYS", "3")
        code, out, err = cli("config", "show", "--config", str(config))
        assert code == 0, err
        rows = table(out)
        assert rows["failed_keep"] == ("200", f"file {config}")
        assert rows["failed_days"] == ("3.0", "env QLEVENTS_FAILED_DAYS")
        assert rows["key_grace_seconds"] == ("86400.0", "default")
        assert {"live_per_second", "live_keep", "failed_per_second"} <= set(rows)

    def test_the_admin_token_is_not_printed(
        self, cli: RunCli, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A set admin token shows as set, never its value."""
        monkeypatch.setenv("QLEVENTS_ADMIN_TOKEN", "very-secret-admin-token")
        _, out, _ = cli("config", "show")
        assert "very-secret-admin-token" not in out
        assert "(set, not shown)" in out and "env QLEVENTS_ADMIN_TOKEN" in out

    def test_a_bad_value_is_an_error_naming_it(
        self, tmp_path: Path, cli: RunCli, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """config show refuses what serve would refuse, with the same message."""
        monkeypatch.setenv("QLEVENTS_WORKERS", "many")
        code, out, err = cli("config", "show")
        assert code == 1 and out == ""
        assert err == "Error: QLEVENTS_WORKERS='many': Expected `int`, got `str`\n"
