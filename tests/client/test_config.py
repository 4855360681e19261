"""The client's options: no default endpoint (events never leave for a server by accident),
and the spool's caps."""

from __future__ import annotations

from typing import Any

import pytest

import qlevents
from qlevents import AsyncClient, Client, ClientError
from qlevents.testing import AsyncRecordingTransport, RecordingTransport

#: Each test runs with both clients; AsyncClient can be made outside a loop (it starts
#: sending with its first event), which is all these tests need.
FLAVOURS = pytest.mark.parametrize(
    ("make", "transport"),
    [(Client, RecordingTransport), (AsyncClient, AsyncRecordingTransport)],
    ids=["Client", "AsyncClient"],
)


@pytest.fixture(autouse=True)
def no_endpoint_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QLEVENTS_ENDPOINT", raising=False)


@FLAVOURS
class TestEndpoint:
    def test_a_client_without_an_endpoint_is_refused_naming_both_ways(
        self, make: Any, transport: Any
    ) -> None:
        """No endpoint= and no QLEVENTS_ENDPOINT: a ClientError that says how to give one."""
        recording = transport()
        with pytest.raises(ClientError) as refused:
            make("qlk_key", transport=recording)
        assert "endpoint=" in str(refused.value)
        assert "QLEVENTS_ENDPOINT" in str(refused.value)
        assert "no server by default" in str(refused.value)
        assert recording.requests == []

    def test_the_endpoint_comes_from_the_environment(
        self, make: Any, transport: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """QLEVENTS_ENDPOINT is used when the code gives none; endpoint= wins over it."""
        monkeypatch.setenv("QLEVENTS_ENDPOINT", "https://events.shop.example/events")
        from_env = make("qlk_key", transport=transport())
        given = make("qlk_key", "https://other.example/events", transport=transport())
        assert from_env.options.endpoint == "https://events.shop.example/events"
        assert given.options.endpoint == "https://other.example/events"

    def test_a_blank_environment_variable_is_no_endpoint(
        self, make: Any, transport: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """QLEVENTS_ENDPOINT set but blank is refused like a missing one."""
        monkeypatch.setenv("QLEVENTS_ENDPOINT", "  ")
        with pytest.raises(ClientError, match="QLEVENTS_ENDPOINT"):
            make("qlk_key", transport=transport())

    def test_an_endpoint_without_its_path_is_refused(self, make: Any, transport: Any) -> None:
        """A bare server URL would be answered 404 for every event: refused, /events named."""
        with pytest.raises(ClientError, match=r"did you mean 'http://127\.0\.0\.1:8080/events'"):
            make("qlk_key", "http://127.0.0.1:8080/", transport=transport())


def test_no_default_endpoint_is_exported() -> None:
    """The package names no server of anyone's: DEFAULT_ENDPOINT is gone from its API."""
    assert not hasattr(qlevents, "DEFAULT_ENDPOINT")
    assert not hasattr(qlevents.client, "DEFAULT_ENDPOINT")


@FLAVOURS
class TestSpoolCaps:
    @pytest.mark.parametrize(
        ("option", "value"),
        [("spool_max_bytes", 0), ("spool_max_events", -1), ("spool_max_events", 1.5)],
    )
    def test_a_cap_must_be_a_positive_integer_or_none(
        self, make: Any, transport: Any, option: str, value: object
    ) -> None:
        """A cap of 0, a negative or a fractional one is refused by name."""
        with pytest.raises(ClientError, match=option):
            make("qlk_key", "https://e.example/events", transport=transport(), **{option: value})
