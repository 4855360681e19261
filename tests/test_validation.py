"""The event rules: each one broken alone fails with its code, valid events always pass,
and the fast path (msgspec) and the slow path (every problem) agree on every input."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from qlevents import events as ev
from qlevents.events import ConversionEvent, ViewEvent
from qlevents.validation import convert_event, decode_event, find_problems


def valid_view(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "client_key": "k",
        "price": 123.41,
        "product_id": "123-AA-X23",
        "event": "view",
        "permalink": "https://yourstore.com/123-AA-X23/",
    }
    event.update(fields)
    return event


def valid_conversion(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "client_key": "k",
        "price": 60,
        "product_id": "455DD-AA-X23",
        "event": "conversion",
    }
    event.update(fields)
    return event


def codes(raw: bytes) -> list[tuple[str | None, str]]:
    result = decode_event(raw)
    assert isinstance(result, list), f"expected problems, got {result!r}"
    return [(p.field, p.code) for p in result]


MISSING = object()

# (event builder, field, value, expected code): each breaks exactly one rule.
BROKEN_ALONE = [
    (valid_view, "client_key", MISSING, "missing_field"),
    (valid_view, "client_key", "", "empty_value"),
    (valid_view, "client_key", 42, "invalid_type"),
    (valid_view, "client_key", "k" * (ev.MAX_KEY_LENGTH + 1), "too_long"),
    (valid_view, "event", MISSING, "missing_field"),
    (valid_view, "event", "click", "unknown_event"),
    (valid_view, "event", "VIEW", "unknown_event"),
    (valid_view, "price", MISSING, "missing_field"),
    (valid_view, "price", "12.5", "invalid_type"),
    (valid_view, "price", True, "invalid_type"),
    (valid_view, "price", None, "invalid_type"),
    (valid_view, "price", -0.01, "out_of_range"),
    (valid_view, "price", 1e13, "out_of_range"),
    (valid_view, "product_id", MISSING, "missing_field"),
    (valid_view, "product_id", "", "empty_value"),
    (valid_view, "product_id", 123, "invalid_type"),
    (valid_view, "permalink", MISSING, "missing_field"),
    (valid_view, "permalink", "/relative/path", "invalid_url"),
    (valid_view, "permalink", "ftp://shop.example/x", "invalid_url"),
    (valid_view, "permalink", "https://", "invalid_url"),
    (valid_view, "permalink", "https://shop.example/p\n", "invalid_url"),
    (valid_view, "permalink", "https://a.example/x\nhttps://b.example/y", "invalid_url"),
    (valid_view, "permalink", 7, "invalid_type"),
    (valid_view, "vid", 12, "invalid_type"),
    (valid_view, "tags", "user:new", "invalid_type"),
    (valid_view, "tags", [1], "invalid_type"),
    (valid_view, "tags", ["t"] * (ev.MAX_TAGS + 1), "too_many_items"),
    (valid_view, "channels", ["c"] * (ev.MAX_CHANNELS + 1), "too_many_items"),
    (valid_conversion, "channels", ["online", "store"], "too_many_items"),
    (valid_conversion, "units", 0, "out_of_range"),
    (valid_conversion, "units", 2.5, "invalid_type"),
    (valid_conversion, "units", "3", "invalid_type"),
    (valid_conversion, "units", True, "invalid_type"),
    (valid_conversion, "units", ev.MAX_UNITS + 1, "out_of_range"),
]


class TestEachRuleBrokenAlone:
    @pytest.mark.parametrize(("build", "field", "value", "code"), BROKEN_ALONE)
    def test_fails_with_its_code(self, build: Any, field: str, value: object, code: str) -> None:
        """Breaking one rule yields exactly one problem, on that field, with that code."""
        event = build()
        if value is MISSING:
            del event[field]
        else:
            event[field] = value
        assert codes(json.dumps(event).encode()) == [(field, code)]
        assert [(p.field, p.code) for p in convert_event(event)] == [(field, code)]  # type: ignore[union-attr]

    def test_message_names_field_value_and_rule(self) -> None:
        """A message is one sentence with the field, what was sent and the rule."""
        [problem] = decode_event(json.dumps(valid_view(price="12.5")).encode())  # type: ignore[misc]
        assert problem.message == 'price must be a JSON number; got "12.5".'


class TestEveryProblemIsReported:
    def test_reports_all_problems_of_one_event(self) -> None:
        """Several broken fields: all of them are reported, not only the first."""
        raw = json.dumps(valid_view(price="x", product_id="", permalink="nope")).encode()
        assert codes(raw) == [
            ("price", "invalid_type"),
            ("product_id", "empty_value"),
            ("permalink", "invalid_url"),
        ]

    def test_unknown_event_still_checks_shared_fields(self) -> None:
        """With a broken event name, the fields both kinds share are still checked."""
        assert codes(b'{"event": "click", "price": -1}') == [
            ("event", "unknown_event"),
            ("client_key", "missing_field"),
            ("price", "out_of_range"),
            ("product_id", "missing_field"),
        ]

    def test_non_object_event(self) -> None:
        """An array element that is not an object fails as not_an_object."""
        assert codes(b"[1, 2]") == [(None, "not_an_object")]
        assert codes(b"null") == [(None, "not_an_object")]

    def test_huge_number_is_reported_on_its_field(self) -> None:
        """A 5000-digit price is out_of_range on price; the other fields are still checked."""
        raw = (
            b'{"event":"conversion","client_key":"","product_id":"p","price":' + b"9" * 5000 + b"}"
        )
        assert codes(raw) == [("client_key", "empty_value"), ("price", "out_of_range")]


class TestValidEvents:
    def test_spec_examples_are_valid(self) -> None:
        """The spec's own examples pass, integers as prices included."""
        assert isinstance(decode_event(json.dumps(valid_view()).encode()), ViewEvent)
        conv = decode_event(json.dumps(valid_conversion(units=3, channels=["online"])).encode())
        assert isinstance(conv, ConversionEvent) and conv.price == 60.0 and conv.units == 3

    def test_unknown_fields_are_ignored(self) -> None:
        """Fields the spec does not define are not an error; a conversion's permalink is ignored."""
        assert isinstance(decode_event(json.dumps(valid_view(extra=1)).encode()), ViewEvent)
        conv = decode_event(json.dumps(valid_conversion(permalink=5)).encode())
        assert isinstance(conv, ConversionEvent)

    def test_null_vid_and_uppercase_scheme(self) -> None:
        """vid may be null; a URL scheme is case-insensitive."""
        event = valid_view(vid=None, permalink="HTTPS://Shop.example/x?y=1#z")
        assert isinstance(decode_event(json.dumps(event).encode()), ViewEvent)


# --- the two paths agree on everything -------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
field_values = {
    "client_key": st.one_of(st.text(max_size=3), json_values),
    "event": st.sampled_from(["view", "conversion", "click", ""]) | json_values,
    "price": st.one_of(
        st.floats(min_value=-10, max_value=2e12), st.integers(-5, 10**13), json_values
    ),
    "product_id": st.one_of(st.text(max_size=3), json_values),
    "permalink": st.sampled_from(
        ["https://a.b/c", "http://x", "ftp://x", "https://", "HTTP://A/", "x", ""]
    )
    | json_values,
    "vid": st.one_of(st.none(), st.text(max_size=3), json_values),
    "tags": st.one_of(st.lists(st.text(max_size=3), max_size=3), json_values),
    "channels": st.one_of(st.lists(st.text(max_size=3), max_size=3), json_values),
    "units": st.one_of(st.integers(-2, 5), st.floats(0, 5), json_values),
}
events = st.fixed_dictionaries({}, optional=field_values)


class TestPathsAgree:
    @settings(max_examples=400, deadline=None)
    @given(events)
    @example({"event": "view", "client_key": "k", "price": 1, "product_id": "p",
              "permalink": "ftp://x"})  # fmt: skip
    def test_typed_decode_succeeds_exactly_when_no_problem_is_found(
        self, event: dict[str, Any]
    ) -> None:
        """msgspec, with the permalink check every decoder runs after it (the URL form is
        not in the msgspec type), accepts an event if and only if the rule walker finds no
        problem."""
        raw = json.dumps(event).encode()
        try:
            accepted = ev.permalink_ok(msgspec.json.decode(raw, type=ev.Event))
        except msgspec.ValidationError:
            accepted = False
        assert accepted == (find_problems(json.loads(raw)) == [])
        result = decode_event(raw)
        assert isinstance(result, list) != accepted
        if isinstance(result, list):
            assert all(p.code != "invalid_value" for p in result), result


class TestText:
    def test_lone_surrogate_escape_is_invalid_text(self) -> None:
        """Text that is not Unicode (a lone \\ud800 escape) fails as invalid_text."""
        raw = rb'{"event":"view","client_key":"\ud800","price":1,"product_id":"p"}'
        assert codes(raw) == [(None, "invalid_text")]


class TestRepeatedKeys:
    def test_every_occurrence_of_a_repeated_key_is_checked(self) -> None:
        """msgspec checks each occurrence of a repeated key, so the walker reports it precisely."""
        raw = b'{"event":"conversion","client_key":"k","product_id":"p","price":-1,"price":5}'
        assert codes(raw) == [("price", "out_of_range")]

    def test_conflicting_event_names_are_a_duplicate_field(self) -> None:
        """The kind comes from the first "event"; a different later value is refused."""
        raw = b'{"event":"conversion","client_key":"k","product_id":"p","price":1,"event":"view"}'
        assert codes(raw) == [("event", "duplicate_field")]

    def test_last_valid_occurrence_wins(self) -> None:
        """Valid repeats decode with the last value, as JSON parsers commonly do."""
        raw = b'{"event":"conversion","client_key":"k","product_id":"a","price":1,"product_id":"b"}'
        event = decode_event(raw)
        assert isinstance(event, ConversionEvent) and event.product_id == "b"


class TestPermalinksOfABatch:
    """A batch's permalinks are checked with one regex match over all of them."""

    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            ([], True),
            (["https://shop.example/p"], True),
            (["https://shop.example/p", "HTTP://shop.example"], True),
            (["https://shop.example/p", "/relative"], False),
            (["https://shop.example/p", ""], False),
            (["https://a.example/x\nhttps://b.example/y"], False),
            (["https://a.example/x\nhttps://b.example/y", "https://c.example/"], False),
            (["https://a.example/x\n"], False),
            (["https://a.example/x", "\nhttps://b.example/y"], False),
        ],
    )
    def test_examples(self, values: list[str], expected: bool) -> None:
        assert ev.are_permalinks(values) is expected
        assert all(ev.is_permalink(value) for value in values) is expected

    @settings(max_examples=500)
    @given(
        st.lists(
            st.one_of(
                st.sampled_from(["https://shop.example/p", "http://a.b/?q=1#x", "https://h"]),
                st.text(alphabet="hts:/pa.\n x?#@", max_size=25),
            ),
            max_size=6,
        )
    )
    def test_agrees_with_one_by_one(self, values: list[str]) -> None:
        """Whatever the values, line breaks inside them included."""
        assert ev.are_permalinks(values) is all(ev.is_permalink(value) for value in values)
