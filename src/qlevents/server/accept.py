"""Accepting events: each decoded, checked against its account, and if good made a
``StoredEvent`` with an id and the receive time.

Two ways through a body, with the same answer for any body (tests/server/test_accept.py):
``accept_valid_batch`` types the whole array in one decode, the fast path for a batch whose
every event is valid and homed here, and declines anything else; ``accept_each`` then takes the
split events one by one and lists every problem of every event.
"""

from __future__ import annotations

from typing import Final

import msgspec

from qlevents.events import (
    ConversionEvent,
    ErrorEntry,
    Event,
    EventsResponse,
    StoredEvent,
    ViewEvent,
    are_permalinks,
)
from qlevents.server.directory import AccountDirectory
from qlevents.server.ids import new_event_ids
from qlevents.validation import decode_event

#: The whole body as events, in one typed decode: the fast path for all-valid batches.
_decode_batch: Final = msgspec.json.Decoder(list[Event]).decode
_EVENT_TYPES: Final = (ViewEvent, ConversionEvent)


class _KeyOnly(msgspec.Struct):
    """Reads just the client key of an event that failed validation, ignoring the rest."""

    client_key: object = None


_read_key: Final = msgspec.json.Decoder(_KeyOnly).decode


def client_key_of(raw: msgspec.Raw) -> str | None:
    """The client key of a raw event, if it has one that is a string."""
    try:
        key = _read_key(raw).client_key
    except msgspec.DecodeError:  # not an object, or text that is not Unicode
        return None
    return key if isinstance(key, str) else None


def accept_valid_batch(
    body: bytes, accounts: AccountDirectory, received_at: str, max_events: int
) -> EventsResponse | None:
    """The answer for a batch whose every event is valid and homed here, found with one
    typed decode of the whole array; None for anything else (then ``accept_each``)."""
    if body[:1] != b"[":
        return None
    try:
        events = _decode_batch(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    if len(events) > max_events:
        return None
    check = accounts.check
    stored = StoredEvent.from_event
    ids = new_event_ids(len(events))
    accepted: list[StoredEvent] = []
    permalinks: list[str] = []
    for index, event in enumerate(events):
        if check(index, event.client_key) is not None:
            return None
        if type(event) is ViewEvent:
            permalinks.append(event.permalink)
        accepted.append(stored(event, ids[index], received_at))
    if not are_permalinks(permalinks):
        return None
    return EventsResponse(processed=accepted, failed=[], errors=[])


def accept_each(
    raws: list[msgspec.Raw], accounts: AccountDirectory, received_at: str
) -> EventsResponse:
    """Validate event by event: every problem of every event, the good ones accepted."""
    check = accounts.check
    stored = StoredEvent.from_event
    ids = new_event_ids(len(raws))
    response = EventsResponse(processed=[], failed=[], errors=[])
    accepted = response.processed
    for index, raw in enumerate(raws):
        result = decode_event(raw)
        if isinstance(result, _EVENT_TYPES):
            error = check(index, result.client_key)
            if error is None:
                accepted.append(stored(result, ids[index], received_at))
                continue
            errors = [error]
        else:
            errors = [ErrorEntry(index, p.field, p.code, p.message) for p in result]
            if not any(p.field == "client_key" for p in result):
                client_key = client_key_of(raw)
                if client_key is not None:
                    error = check(index, client_key)
                    if error is not None:
                        errors.append(error)
        response.failed.append(raw)
        response.errors.extend(errors)
    return response
