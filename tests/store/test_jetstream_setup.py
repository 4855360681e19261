"""Opening the cluster store: which JetStream refusals are waited out and which are final."""

from __future__ import annotations

import time

import pytest
from nats.js.errors import APIError

from qlevents._exceptions import StoreUnavailableError
from qlevents.store.jetstream_setup import retrying

pytestmark = pytest.mark.anyio

PEER_OFFLINE = APIError(
    code=400, err_code=10005, description="no suitable peers for placement, peer offline"
)
BAD_CONFIG = APIError(code=400, err_code=10052, description="replicas > 1 not supported")
NO_ROOM = APIError(
    code=400, err_code=10005, description="no suitable peers for placement, insufficient storage"
)


class Step:
    """Fails with each of ``errors`` in turn, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


async def test_a_peer_not_yet_online_is_waited_for() -> None:
    """While a (re)starting cluster has not seen every peer, placing the stream fails with
    10005; that passes by itself, so opening retries it."""
    step = Step(PEER_OFFLINE, PEER_OFFLINE)
    await retrying(time.monotonic() + 30, "the event stream", step)
    assert step.calls == 3


async def test_a_peer_that_never_comes_is_named_when_the_wait_ends() -> None:
    """Past the deadline the error says what JetStream said."""
    with pytest.raises(StoreUnavailableError, match="peer offline"):
        await retrying(time.monotonic(), "the event stream", Step(PEER_OFFLINE))


@pytest.mark.parametrize("refusal", [BAD_CONFIG, NO_ROOM], ids=["config", "no-room"])
async def test_a_refusal_that_waiting_cannot_mend_fails_at_once(refusal: APIError) -> None:
    """A 4xx that waiting cannot mend (a configuration the servers refuse, a stream larger
    than their storage) ends the open on the first answer, naming its code."""
    step = Step(refusal)
    with pytest.raises(
        StoreUnavailableError, match=rf"refused the event stream.*{refusal.err_code}"
    ):
        await retrying(time.monotonic() + 30, "the event stream", step)
    assert step.calls == 1
