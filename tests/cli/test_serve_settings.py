"""The settings of ``serve``: one per field, from option > environment > config file > default."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from qlevents.cli import build_parser
from qlevents.cli.errors import CommandError
from qlevents.cli.serve_settings import HELP, SETTINGS, ServeSettings, resolve
from qlevents.server.activity import ActivitySettings
from qlevents.server.config import DashboardSettings, Settings
from qlevents.settings import SettingsError, from_env
from qlevents.store.factory import StoreSettings


def options(*argv: str) -> argparse.Namespace:
    """The namespace ``qlevents serve ARGV`` parses to."""
    args = build_parser().parse_args(["serve", *argv])
    assert isinstance(args, argparse.Namespace)
    return args


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


class TestOneSourceOfNames:
    def test_every_field_of_the_server_settings_is_a_serve_option(self) -> None:
        """Each field of Settings and of its groups (the store's, the dashboard's) has an
        option named after it."""
        fields = set(Settings.__struct_fields__) - {"storage", "dashboard"}
        fields |= set(StoreSettings.__struct_fields__)
        fields |= set(DashboardSettings.__struct_fields__) - {"activity"}
        fields |= set(ActivitySettings.__struct_fields__)
        names = {s.name for s in SETTINGS}
        assert fields <= names
        parsed = options()
        assert all(hasattr(parsed, name) for name in names)

    def test_every_setting_has_a_help_text_and_no_other(self) -> None:
        """The help texts are keyed by setting; none is missing, none is left over."""
        assert set(HELP) == {s.name for s in SETTINGS}

    def test_no_option_given_means_the_defaults(self) -> None:
        """Without options, variables or a file, the settings are the structs' defaults."""
        resolved = resolve(options(), environ={})
        assert resolved.settings == ServeSettings(
            server=Settings(endpoint_url="http://127.0.0.1:8080/events")
        )
        assert set(resolved.sources.values()) == {"default"}

    def test_what_serve_resolves_reaches_the_workers_unchanged(self) -> None:
        """The server's part goes to the workers as QLEVENTS_* variables and back, intact."""
        server = resolve(options("--workers", "3", "--store", "memory"), environ={}).settings.server
        assert from_env(Settings, server.to_env()) == server


class TestPrecedence:
    def test_option_over_environment_over_file_over_default(self, tmp_path: Path) -> None:
        """Each source overrides the ones below it, setting by setting, and says so."""
        config = write(
            tmp_path / "q.toml",
            "workers = 2\nrate_limit = 5\nmax_events = 10\nretain_days = 30\n",
        )
        env = {"QLEVENTS_RATE_LIMIT": "6", "QLEVENTS_MAX_EVENTS": "20"}
        resolved = resolve(options("--config", config, "--max-events", "30"), environ=env)
        server = resolved.settings.server
        assert (server.workers, server.rate_limit, server.max_events) == (2, 6.0, 30)
        assert server.storage.retain_days == 30.0
        assert server.header_timeout == 10.0
        assert resolved.sources["workers"] == f"file {config}"
        assert resolved.sources["rate_limit"] == "env QLEVENTS_RATE_LIMIT"
        assert resolved.sources["max_events"] == "option --max-events"
        assert resolved.sources["header_timeout"] == "default"

    def test_the_config_file_may_be_named_by_qlevents_config(self, tmp_path: Path) -> None:
        """QLEVENTS_CONFIG names the file when --config is not given; --config wins."""
        named = write(tmp_path / "env.toml", "workers = 4\n")
        given = write(tmp_path / "option.toml", "workers = 5\n")
        env = {"QLEVENTS_CONFIG": named}
        assert resolve(options(), environ=env).settings.server.workers == 4
        assert resolve(options("--config", given), environ=env).settings.server.workers == 5

    def test_the_endpoint_url_follows_host_and_port_unless_given(self, tmp_path: Path) -> None:
        """Its default is made from the host and port in effect; a given one is kept."""
        env = {"QLEVENTS_PORT": "9000"}
        assert resolve(options("--host", "10.0.0.5"), environ=env).settings.server.endpoint_url == (
            "http://10.0.0.5:9000/events"
        )
        config = write(tmp_path / "q.toml", 'endpoint_url = "https://evt.example/events"\n')
        resolved = resolve(options("--config", config), environ=env)
        assert resolved.settings.server.endpoint_url == "https://evt.example/events"

    def test_booleans_from_each_source(self, tmp_path: Path) -> None:
        """A TOML boolean, a variable's word and --no-access-log all set access_log."""
        config = write(tmp_path / "q.toml", "access_log = false\n")
        assert not resolve(options("--config", config), environ={}).settings.server.access_log
        env = {"QLEVENTS_ACCESS_LOG": "on"}
        assert resolve(options("--config", config), environ=env).settings.server.access_log
        assert not resolve(options("--no-access-log"), environ=env).settings.server.access_log


class TestDashboardGroup:
    def test_the_dashboards_settings_come_from_every_source(self, tmp_path: Path) -> None:
        """Key grace and the ledger's bounds: file, variable and option, as any setting."""
        config = write(
            tmp_path / "q.toml", "failed_keep = 50\nfailed_days = 2.5\nlive_keep = 100\n"
        )
        env = {"QLEVENTS_KEY_GRACE_SECONDS": "3600", "QLEVENTS_LIVE_KEEP": "200"}
        resolved = resolve(options("--config", config, "--failed-per-second", "5"), environ=env)
        dashboard = resolved.settings.server.dashboard
        assert dashboard.key_grace_seconds == 3600.0
        assert dashboard.activity == ActivitySettings(
            failed_keep=50, failed_days=2.5, live_keep=200, failed_per_second=5
        )
        assert resolved.sources["failed_keep"] == f"file {config}"
        assert resolved.sources["live_keep"] == "env QLEVENTS_LIVE_KEEP"
        assert resolved.sources["failed_per_second"] == "option --failed-per-second"

    def test_the_dashboards_settings_reach_the_workers(self) -> None:
        """serve hands the group to its workers as variables; the dashboard reads it back."""
        given = options("--failed-keep", "7", "--failed-days", "1", "--key-grace-seconds", "60")
        server = resolve(given, environ={}).settings.server
        env = server.to_env()
        assert env["QLEVENTS_FAILED_KEEP"] == "7"
        assert from_env(DashboardSettings, env) == server.dashboard

    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ("failed_keep = -1\n", "failed_keep = -1: Expected `int` >= 0"),
            ("failed_days = -1\n", "failed_days = -1: Expected `float` >= 0"),
            ("activity_flush_seconds = 0\n", "activity_flush_seconds = 0: Expected `float` > 0"),
            ("key_grace_seconds = 2592001\n", "Expected `float` <= 2592000.0"),
        ],
    )
    def test_a_bound_out_of_range_is_refused(self, tmp_path: Path, text: str, says: str) -> None:
        """A negative bound, or a grace period longer than a rotation allows: named."""
        config = write(tmp_path / "q.toml", text)
        with pytest.raises(SettingsError) as caught:
            resolve(options("--config", config), environ={})
        assert says in str(caught.value)


class TestMistakes:
    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ("max-events = 3\n", "unknown key 'max-events' (keys are written with underscores:"
             " max_events)"),
            ("wokers = 3\n", "unknown key 'wokers' (did you mean workers?)"),
            ("[storage]\nstore = 'memory'\n", "unknown key 'storage'"),
            ("workers = 0\n", "workers = 0: Expected `int` >= 1"),
            ('port = "8080"\n', 'port = "8080": Expected `int`, got `str`'),
            ('store = "redis"\n', "store = \"redis\": use 'sqlite' or 'memory' or nats://HOST:PORT"),
            ('synchronous = "OFF"\n', "synchronous = \"OFF\": Invalid enum value 'OFF'"),
            ("workers = \n", "is not valid TOML"),
        ],
    )  # fmt: skip
    def test_a_bad_file_names_the_file_and_the_key(
        self, tmp_path: Path, text: str, says: str
    ) -> None:
        """Unknown keys, values of the wrong type or range, broken TOML: the file and key."""
        config = write(tmp_path / "q.toml", text)
        with pytest.raises(SettingsError) as caught:
            resolve(options("--config", config), environ={})
        assert str(config) in str(caught.value) and says in str(caught.value)

    def test_a_missing_file_says_so(self, tmp_path: Path) -> None:
        """--config naming no file: an error naming it, not the defaults."""
        with pytest.raises(SettingsError, match=r"cannot read the config file .*nope\.toml"):
            resolve(options("--config", str(tmp_path / "nope.toml")), environ={})

    @pytest.mark.parametrize(
        ("variable", "value", "says"),
        [
            ("QLEVENTS_PORT", "x", "QLEVENTS_PORT='x': Expected `int`"),
            ("QLEVENTS_PORT", "70000", "QLEVENTS_PORT='70000': Expected `int` <= 65535"),
            ("QLEVENTS_LOG_LEVEL", "loud", "QLEVENTS_LOG_LEVEL='loud': Invalid enum value"),
            ("QLEVENTS_STORE", "redis", "QLEVENTS_STORE='redis': Expected `str` matching regex"),
        ],
    )
    def test_a_bad_variable_is_named(self, variable: str, value: str, says: str) -> None:
        """A variable's bad value is reported with the variable and what it held."""
        with pytest.raises(SettingsError) as caught:
            resolve(options(), environ={variable: value})
        assert str(caught.value).startswith(says)

    def test_a_bad_option_is_named_and_is_a_usage_error(self) -> None:
        """An option out of range: the option and its value, exit code 2."""
        with pytest.raises(CommandError) as caught:
            resolve(options("--workers", "0"), environ={})
        assert str(caught.value) == "--workers 0: Expected `int` >= 1"
        assert caught.value.exit_code == 2

    def test_an_overridden_bad_value_is_still_an_error(self, tmp_path: Path) -> None:
        """A bad value in the file is refused even where an option overrides it."""
        config = write(tmp_path / "q.toml", "workers = 0\n")
        with pytest.raises(SettingsError, match="workers = 0"):
            resolve(options("--config", config, "--workers", "2"), environ={})
