"""A body split into raw events, in process: what is refused as a whole, and with what message.
(The same bodies over real HTTP: test_events_api.py, test_hostile_input.py.)"""

from __future__ import annotations

import pytest

from qlevents.server.responses import RequestRejected
from qlevents.server.splitting import check_utf8, split_events

MAX = 10


def refused(body: bytes) -> RequestRejected:
    with pytest.raises(RequestRejected) as caught:
        split_events(body, MAX)
    return caught.value


class TestSplit:
    def test_each_element_stays_as_sent(self) -> None:
        """An array's elements come out as their own bytes, whatever they hold."""
        raws = split_events(b'[{"a": 1},  42 ,"x", {"b" :[]}]', MAX)
        assert [bytes(raw) for raw in raws] == [b'{"a": 1}', b"42", b'"x"', b'{"b" :[]}']

    def test_a_bare_object_is_a_batch_of_one(self) -> None:
        """One event object, not in an array, is one event."""
        assert [bytes(raw) for raw in split_events(b' {"a": 1}', MAX)] == [b'{"a": 1}']

    def test_lone_surrogate_escape_is_split_leniently(self) -> None:
        """Text msgspec refuses inside valid JSON splits with the stdlib, event by event."""
        raws = split_events(b'[{"a": "\\ud800"}, {"b": 2}]', MAX)
        assert [bytes(raw) for raw in raws] == [b'{"a": "\\ud800"}', b'{"b": 2}']

    def test_too_many_events_is_413_naming_the_limit(self) -> None:
        """Over max_events: 413 too_many_events, the count and the limit in the message."""
        rejected = refused(b"[" + b",".join([b"{}"] * (MAX + 1)) + b"]")
        assert (rejected.status, rejected.code) == (413, "too_many_events")
        assert rejected.message.startswith(
            f"the request holds {MAX + 1} events; the limit is {MAX}"
        )


class TestRefused:
    @pytest.mark.parametrize(
        ("body", "kind"),
        [(b'"s"', "a string"), (b"true", "a boolean"), (b"null", "null"), (b"-4", "a number")],
    )
    def test_a_json_value_that_is_no_batch_names_its_kind(self, body: bytes, kind: str) -> None:
        """A JSON scalar is 400 not_an_array, saying what it got."""
        rejected = refused(body)
        assert (rejected.status, rejected.code) == (400, "not_an_array")
        assert rejected.message.endswith(f"got {kind}.")

    def test_an_empty_body_says_so(self) -> None:
        """No body at all is invalid JSON, and the message says the body is empty."""
        rejected = refused(b"  ")
        assert rejected.code == "invalid_json"
        assert rejected.message == "the body is not valid JSON: the body is empty."

    def test_deep_nesting_is_400(self) -> None:
        """Nesting past the parser's depth is refused, not a crash."""
        rejected = refused(b"[" * 100_000 + b"]" * 100_000)
        assert (rejected.status, rejected.code) == (400, "invalid_json")

    def test_invalid_utf8_is_refused_with_its_position(self) -> None:
        """A body that is not UTF-8 is 400 invalid_json naming the byte."""
        check_utf8('["é"]'.encode())
        with pytest.raises(RequestRejected) as caught:
            check_utf8(b'["\xff"]')
        assert caught.value.code == "invalid_json"
        assert caught.value.message == "the body is not valid UTF-8: invalid start byte at byte 2."
