"""Accepting events has two ways through a body: one typed decode of the whole array when
every event is valid and homed here (the fast path), and event by event otherwise. Whatever
the body, they must give the same answer: checked here in-process with generated batches
(60 of each kind; ``make reliability`` runs ten times as many)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlevents.accounts import DISABLED, AccountBook
from qlevents.events import EventsResponse
from qlevents.server.accept import accept_each, accept_valid_batch
from qlevents.server.directory import AccountDirectory
from qlevents.server.splitting import split_events
from tests.server.test_properties import PROPERTY_SETTINGS, broken_events, scaled, valid_events

LOCAL = "http://127.0.0.1:8080/events"
RECEIVED_AT = "2026-11-27T00:00:00.000000Z"
MAX_EVENTS = 1000


@pytest.fixture(scope="module")
def directory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[AccountDirectory, dict[str, str]]]:
    book = AccountBook(tmp_path_factory.mktemp("accounts"))
    keys = {
        "home": book.add("home").client_key,
        "elsewhere": book.add("elsewhere", "http://other.example/events").client_key,
        "disabled": book.add("disabled").client_key,
    }
    book.set_status(keys["disabled"], DISABLED)
    accounts = AccountDirectory(book, LOCAL)
    accounts.reload()
    yield accounts, keys
    book.close()


def both_paths(
    accounts: AccountDirectory, body: bytes
) -> tuple[EventsResponse | None, EventsResponse]:
    fast = accept_valid_batch(body, accounts, RECEIVED_AT, MAX_EVENTS)
    slow = accept_each(split_events(body, MAX_EVENTS), accounts, RECEIVED_AT)
    return fast, slow


def without_ids(response: EventsResponse) -> Any:
    answer = json.loads(msgspec.json.encode(response))
    for event in answer["processed"]:
        assert event.pop("id")
    return answer


@settings(PROPERTY_SETTINGS, max_examples=scaled(60))
@given(data=st.data())
def test_valid_batches_take_the_fast_path_with_the_same_answer(
    directory: tuple[AccountDirectory, dict[str, str]], data: st.DataObject
) -> None:
    """All valid and homed here: the fast path answers, exactly as event by event would."""
    accounts, keys = directory
    batch = data.draw(st.lists(valid_events(keys["home"]), max_size=30))
    fast, slow = both_paths(accounts, json.dumps(batch).encode())
    assert fast is not None
    assert without_ids(fast) == without_ids(slow)
    assert len(fast.processed) == len(batch)


@settings(PROPERTY_SETTINGS, max_examples=scaled(60))
@given(data=st.data())
def test_one_bad_event_sends_the_batch_event_by_event(
    directory: tuple[AccountDirectory, dict[str, str]], data: st.DataObject
) -> None:
    """One broken event, or one whose account is unknown, disabled or homed elsewhere: the
    fast path declines the whole batch, so the answer lists every problem."""
    accounts, keys = directory
    good = data.draw(st.lists(valid_events(keys["home"]), max_size=10))
    bad = data.draw(
        st.one_of(
            broken_events(keys["home"]).map(lambda pair: pair[0]),
            st.sampled_from(["elsewhere", "disabled"]).flatmap(
                lambda name: valid_events(keys[name])
            ),
            valid_events("qk_not_a_key_of_anyone"),
        )
    )
    at = data.draw(st.integers(0, len(good)))
    batch = [*good[:at], bad, *good[at:]]
    fast, slow = both_paths(accounts, json.dumps(batch).encode())
    assert fast is None
    assert [error["index"] for error in without_ids(slow)["errors"]][:1] == [at]
    assert len(slow.processed) == len(good)


def test_bodies_that_are_not_arrays_go_event_by_event(
    directory: tuple[AccountDirectory, dict[str, str]],
) -> None:
    """A bare object, an array over the event limit: the fast path leaves them alone."""
    accounts, keys = directory
    one = {
        "client_key": keys["home"],
        "event": "conversion",
        "price": 5,
        "product_id": "p",
    }
    assert accept_valid_batch(json.dumps(one).encode(), accounts, RECEIVED_AT, MAX_EVENTS) is None
    too_many = json.dumps([one] * (MAX_EVENTS + 1)).encode()
    assert accept_valid_batch(too_many, accounts, RECEIVED_AT, MAX_EVENTS) is None
