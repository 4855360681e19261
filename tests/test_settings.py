"""Settings from QLEVENTS_* variables: converted by msgspec, errors name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlevents.server.config import Settings
from qlevents.settings import SettingsError
from qlevents.store.factory import StoreSettings


class TestFromEnv:
    def test_unset_variables_keep_the_defaults(self) -> None:
        """No QLEVENTS_* variable: the defaults."""
        assert Settings.from_env({}) == Settings()

    def test_values_are_converted_to_the_fields_types(self) -> None:
        """Numbers, booleans, paths and the store's group come from their variables."""
        settings = Settings.from_env(
            {
                "QLEVENTS_WORKERS": "2",
                "QLEVENTS_RATE_LIMIT": "12.5",
                "QLEVENTS_ACCESS_LOG": "off",
                "QLEVENTS_DATA_DIR": "/srv/qlevents",
                "QLEVENTS_STORE": "memory",
                "QLEVENTS_SYNCHRONOUS": "EXTRA",
            }
        )
        assert settings.workers == 2
        assert settings.rate_limit == 12.5
        assert settings.access_log is False
        assert settings.data_dir == Path("/srv/qlevents")
        assert settings.storage == StoreSettings(store="memory", synchronous="EXTRA")

    @pytest.mark.parametrize("word", ["1", "true", "TRUE", "yes", "on"])
    def test_booleans_accept_the_usual_words(self, word: str) -> None:
        """1/true/yes/on (any case) are true."""
        assert Settings.from_env({"QLEVENTS_ACCESS_LOG": word}).access_log is True

    def test_what_to_env_writes_from_env_reads_back(self) -> None:
        """Settings survive the trip to every worker process through the environment."""
        settings = Settings(
            workers=3,
            access_log=False,
            data_dir=Path("/tmp/x"),
            storage=StoreSettings(store="memory", max_pending_events=10),
        )
        assert Settings.from_env(settings.to_env()) == settings

    @pytest.mark.parametrize(
        ("variable", "value", "says"),
        [
            ("QLEVENTS_WORKERS", "two", "Expected `int`"),
            ("QLEVENTS_WORKERS", "0", ">= 1"),
            ("QLEVENTS_ACCESS_LOG", "maybe", "Expected `bool`"),
            ("QLEVENTS_SYNCHRONOUS", "OFF", "Invalid enum value 'OFF'"),
            ("QLEVENTS_MAX_PENDING_EVENTS", "-1", ">= 1"),
            ("QLEVENTS_STORE", "redis", "matching regex"),
        ],
    )
    def test_a_bad_value_names_its_variable(self, variable: str, value: str, says: str) -> None:
        """The error says which variable, what it held, and what is wrong."""
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({variable: value})
        assert str(caught.value).startswith(f"{variable}={value!r}: ")
        assert says in str(caught.value)
