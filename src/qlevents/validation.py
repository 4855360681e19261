"""Per-event validation, shared by the server and the SDK.

The fast path decodes an event straight into :mod:`qlevents.events` structs with one
prebuilt msgspec decoder. msgspec stops at the first problem, so when it rejects an
event the slow path walks the event again and reports *every* problem with a stable
code; both paths apply the same limits (``tests/test_validation.py`` proves they agree).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from qlevents import events as ev
from qlevents.events import ConversionEvent, Event, ViewEvent

# Stable error codes (part of the API contract, see docs/api.md).
NOT_AN_OBJECT: Final = "not_an_object"
MISSING_FIELD: Final = "missing_field"
INVALID_TYPE: Final = "invalid_type"
EMPTY_VALUE: Final = "empty_value"
TOO_LONG: Final = "too_long"
OUT_OF_RANGE: Final = "out_of_range"
INVALID_URL: Final = "invalid_url"
TOO_MANY_ITEMS: Final = "too_many_items"
UNKNOWN_EVENT: Final = "unknown_event"
INVALID_VALUE: Final = "invalid_value"
INVALID_TEXT: Final = "invalid_text"
DUPLICATE_FIELD: Final = "duplicate_field"

EVENT_NAMES: Final = ("view", "conversion")


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken rule: the field (None for the event as a whole), a code and a sentence."""

    field: str | None
    code: str
    message: str


_event_decoder: Final = msgspec.json.Decoder(Event)


class _OversizeNumber(float):
    """A JSON number too long to be a price or a count; keeps its text for the message."""

    text: str

    def __new__(cls, text: str) -> _OversizeNumber:
        self = super().__new__(cls, math.inf)
        self.text = text
        return self

    def __repr__(self) -> str:
        return self.text[:20] + "..."


def _parse_int(text: str) -> int | float:
    return int(text) if len(text) <= 30 else _OversizeNumber(text)


class _JsonObject(dict[str, Any]):
    """A decoded object that remembers every value of a key given more than once."""

    repeats: dict[str, list[Any]]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        obj.repeats = {}
        for name, value in pairs:
            obj.repeats.setdefault(name, []).append(value)
    return obj


def _loads_lenient(raw: bytes) -> Any:
    # The stdlib parser with hooks, because msgspec refuses a whole object over one number
    # it cannot represent (a 5000-digit price), and we want to report that field alone; and
    # because msgspec checks every occurrence of a repeated key, so the walker must see them.
    return json.loads(raw, parse_int=_parse_int, object_pairs_hook=_object)


def _occurrences(obj: dict[str, Any], name: str) -> list[Any]:
    """Every value given for ``name`` (a key may be repeated; the last one is kept)."""
    repeats = getattr(obj, "repeats", None)
    return repeats[name] if repeats and name in repeats else [obj[name]]


def decode_event(raw: bytes | msgspec.Raw) -> Event | list[Problem]:
    """Decode one JSON event; return the typed event or every problem found in it."""
    try:
        event: Event = _event_decoder.decode(raw)
        if ev.permalink_ok(event):
            return event
        first = "the permalink is not an absolute http(s) URL"
    except msgspec.ValidationError as exc:
        first = str(exc)
    except msgspec.DecodeError as exc:
        # Valid JSON syntax around text that is not Unicode (a lone UTF-16 surrogate escape).
        return [
            Problem(None, INVALID_TEXT, f"the event holds text that is not valid Unicode: {exc}.")
        ]
    try:
        obj = _loads_lenient(bytes(raw))
    except (ValueError, RecursionError):  # pragma: no cover - msgspec accepted the syntax
        return [Problem(None, INVALID_VALUE, f"the event is not valid JSON: {first}.")]
    return find_problems(obj) or [Problem(None, INVALID_VALUE, f"the event is invalid: {first}.")]


def convert_event(obj: Mapping[str, Any]) -> Event | list[Problem]:
    """Check an event given as Python objects (the SDK's path); same rules as decode_event."""
    try:
        event: Event = msgspec.convert(obj, Event)
        if ev.permalink_ok(event):
            return event
        first = "the permalink is not an absolute http(s) URL"
    except msgspec.ValidationError as exc:
        first = str(exc)
    return find_problems(obj) or [Problem(None, INVALID_VALUE, f"the event is invalid: {first}.")]


# --- the slow path: every problem of one event -------------------------------------------


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _shown(value: object) -> str:
    if isinstance(value, str):
        text = json.dumps(value if len(value) <= 40 else value[:40] + "...", ensure_ascii=False)
        return f"{text} (a string of {len(value)} characters)" if len(value) > 40 else text
    if isinstance(value, list | tuple | dict):
        kind = _json_type(value)
        return f"an {kind} of {len(value)} items" if kind == "array" else f"an {kind}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, _OversizeNumber):
        return f"a number of {len(value.text)} digits"
    return repr(value)


_Check = Callable[[str, object], "Problem | None"]


def _string(min_length: int, max_length: int, what: str = "a string") -> _Check:
    def check(name: str, value: object) -> Problem | None:
        if not isinstance(value, str):
            return Problem(name, INVALID_TYPE, f"{name} must be {what}; got {_shown(value)}.")
        if len(value) < min_length:
            return Problem(name, EMPTY_VALUE, f'{name} must be a non-empty string; got "".')
        if len(value) > max_length:
            return Problem(
                name,
                TOO_LONG,
                f"{name} must be at most {max_length} characters; got {_shown(value)}.",
            )
        return None

    return check


def _url(name: str, value: object) -> Problem | None:
    problem = _string(0, ev.MAX_URL_LENGTH, "an absolute http(s) URL string")(name, value)
    if problem is None and not ev.is_permalink(str(value)):
        return Problem(
            name, INVALID_URL, f"{name} must be an absolute http(s) URL; got {_shown(value)}."
        )
    return problem


def _number(name: str, value: object) -> Problem | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Problem(name, INVALID_TYPE, f"{name} must be a JSON number; got {_shown(value)}.")
    if not (0 <= value <= ev.MAX_PRICE):  # also false for NaN
        return Problem(
            name,
            OUT_OF_RANGE,
            f"{name} must be a number from 0 to {ev.MAX_PRICE:.0f}; got {_shown(value)}.",
        )
    return None


def _units(name: str, value: object) -> Problem | None:
    if isinstance(value, bool) or not isinstance(value, int) or isinstance(value, _OversizeNumber):
        if isinstance(value, _OversizeNumber):
            return Problem(
                name,
                OUT_OF_RANGE,
                f"{name} must be an integer from 1 to {ev.MAX_UNITS}; got {_shown(value)}.",
            )
        return Problem(name, INVALID_TYPE, f"{name} must be an integer; got {_shown(value)}.")
    if not (1 <= value <= ev.MAX_UNITS):
        return Problem(
            name,
            OUT_OF_RANGE,
            f"{name} must be an integer from 1 to {ev.MAX_UNITS}; got {value}.",
        )
    return None


def _nullable(check: _Check) -> _Check:
    def nullable(name: str, value: object) -> Problem | None:
        return None if value is None else check(name, value)

    return nullable


def _labels(max_items: int) -> _Check:
    label = _string(0, ev.MAX_LABEL_LENGTH)

    def check(name: str, value: object) -> Problem | None:
        if not isinstance(value, list):
            return Problem(
                name, INVALID_TYPE, f"{name} must be an array of strings; got {_shown(value)}."
            )
        if len(value) > max_items:
            rule = "at most one item" if max_items == 1 else f"at most {max_items} items"
            return Problem(name, TOO_MANY_ITEMS, f"{name} must hold {rule}; got {len(value)}.")
        for i, item in enumerate(value):
            problem = label(f"{name}[{i}]", item)
            if problem is not None:
                return Problem(name, problem.code, problem.message)
        return None

    return check


@dataclass(frozen=True, slots=True)
class _Field:
    check: _Check
    required: bool


_COMMON: Final = {
    "client_key": _Field(_string(1, ev.MAX_KEY_LENGTH), required=True),
    "price": _Field(_number, required=True),
    "product_id": _Field(_string(1, ev.MAX_PRODUCT_ID_LENGTH), required=True),
    "vid": _Field(_nullable(_string(0, ev.MAX_VID_LENGTH, "a string or null")), required=False),
    "tags": _Field(_labels(ev.MAX_TAGS), required=False),
}
_RULES: Final[dict[str, dict[str, _Field]]] = {
    "view": {
        **_COMMON,
        "permalink": _Field(_url, required=True),
        "channels": _Field(_labels(ev.MAX_CHANNELS), required=False),
    },
    "conversion": {
        **_COMMON,
        "channels": _Field(_labels(ev.MAX_CONVERSION_CHANNELS), required=False),
        "units": _Field(_nullable(_units), required=False),
    },
}
# Checked when "event" itself is broken: the fields both kinds share.
_UNKNOWN_KIND_RULES: Final = _COMMON


def find_problems(obj: object) -> list[Problem]:
    """Every rule of the contract that ``obj`` (one decoded event) breaks; [] if none."""
    if not isinstance(obj, dict):
        return [Problem(None, NOT_AN_OBJECT, f"an event must be a JSON object; got {_shown(obj)}.")]
    problems: list[Problem] = []
    # msgspec takes the kind from the first "event" and refuses any other value after it.
    kinds = _occurrences(obj, "event") if "event" in obj else []
    kind = kinds[0] if kinds else None
    if any(k != kind or type(k) is not type(kind) for k in kinds[1:]):
        shown = ", ".join(_shown(k) for k in kinds)
        problems.append(
            Problem(
                "event",
                DUPLICATE_FIELD,
                f"event is given {len(kinds)} times with different values ({shown}); send it once.",
            )
        )
        rules = _UNKNOWN_KIND_RULES
    elif "event" not in obj:
        problems.append(
            Problem("event", MISSING_FIELD, 'event is required: "view" or "conversion".')
        )
        rules = _UNKNOWN_KIND_RULES
    elif kind not in EVENT_NAMES:
        problems.append(
            Problem(
                "event",
                UNKNOWN_EVENT,
                f'event must be "view" or "conversion"; got {_shown(kind)}.',
            )
        )
        rules = _UNKNOWN_KIND_RULES
    else:
        rules = _RULES[str(kind)]
    for name, field in rules.items():
        if name not in obj:
            if field.required:
                what = f"a {kind} event" if rules is not _UNKNOWN_KIND_RULES else "every event"
                problems.append(Problem(name, MISSING_FIELD, f"{name} is required on {what}."))
            continue
        for value in _occurrences(obj, name):
            problem = field.check(name, value)
            if problem is not None:
                problems.append(problem)
                break
    return problems


def event_kind(event: Event) -> str:
    """The wire name of an event's kind."""
    return "view" if isinstance(event, ViewEvent) else "conversion"


__all__ = [
    "ConversionEvent",
    "Problem",
    "ViewEvent",
    "convert_event",
    "decode_event",
    "event_kind",
    "find_problems",
]
