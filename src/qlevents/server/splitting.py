"""A body as JSON text, split into one raw JSON value per event.

Each event stays raw bytes (``msgspec.Raw``), so a broken event cannot spoil its neighbours
and is echoed back in ``failed`` exactly as sent. What is not JSON, not an array of events
(or one event object), or holds too many events is refused as a whole (``RequestRejected``).
"""

from __future__ import annotations

import json
from typing import Final

import msgspec

from qlevents.server.responses import RequestRejected

_split_array: Final = msgspec.json.Decoder(list[msgspec.Raw]).decode
_check_json: Final = msgspec.json.Decoder(msgspec.Raw).decode


def check_utf8(body: bytes) -> None:
    """Refuse a body that is not UTF-8. msgspec skips what it ignores (unknown fields, the
    elements it hands out as Raw) without checking it, and failed events are echoed back as
    sent: so the whole body is checked once, here."""
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestRejected(
                400,
                "invalid_json",
                f"the body is not valid UTF-8: {exc.reason} at byte {exc.start}.",
            ) from exc


def split_events(body: bytes, max_events: int) -> list[msgspec.Raw]:
    """The events of a JSON array (or the one event of a bare object), each as raw JSON."""
    start = body.lstrip()[:1]
    try:
        if start == b"[":
            raws = _split_array(body)
        elif start == b"{":
            raws = [_check_json(body)]
        else:
            _check_json(body)  # a precise message for what is not JSON at all
            raise RequestRejected(
                400,
                "not_an_array",
                "the body must be a JSON array of event objects (or one event object);"
                f" got {_json_kind(start)}.",
            )
    except msgspec.DecodeError as exc:
        raws = _split_after_error(body, exc)
    except RecursionError as exc:
        raise RequestRejected(
            400, "invalid_json", "the body is nested too deeply to be an array of events."
        ) from exc
    if len(raws) > max_events:
        raise RequestRejected(
            413,
            "too_many_events",
            f"the request holds {len(raws)} events; the limit is {max_events} per request."
            " Split the events over several requests.",
        )
    return raws


def _split_after_error(body: bytes, exc: msgspec.DecodeError) -> list[msgspec.Raw]:
    # Text msgspec refuses inside valid JSON syntax (a lone surrogate escape): split with the
    # stdlib so that only that event fails. Only then: the stdlib parser is ~10x slower.
    if "escape" in str(exc) or "surrogate" in str(exc):
        try:
            return split_lenient(body)
        except (ValueError, RecursionError):
            pass
    detail = str(exc) if body.strip() else "the body is empty"
    raise RequestRejected(400, "invalid_json", f"the body is not valid JSON: {detail}.") from exc


def split_lenient(body: bytes) -> list[msgspec.Raw]:
    """Split with the stdlib parser, which accepts text msgspec refuses (a lone surrogate
    escape), so that such an event fails alone instead of failing the whole request."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder(parse_constant=_refuse_constant)
    at = _skip_space(text, 0)
    if text[at : at + 1] == "{":
        decoder.decode(text)  # one event: check the whole body is one JSON value
        return [msgspec.Raw(body)]
    if text[at : at + 1] != "[":
        raise ValueError("not an array")
    raws: list[msgspec.Raw] = []
    at = _skip_space(text, at + 1)
    if text[at : at + 1] == "]":
        return raws
    while True:
        _, end = decoder.raw_decode(text, at)
        raws.append(msgspec.Raw(text[at:end].encode()))
        at = _skip_space(text, end)
        if text[at : at + 1] == "]" and not text[at + 1 :].strip():
            return raws
        if text[at : at + 1] != ",":
            raise ValueError("malformed array")
        at = _skip_space(text, at + 1)


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _json_kind(start: bytes) -> str:
    if start == b'"':
        return "a string"
    if start in (b"t", b"f"):
        return "a boolean"
    if start == b"n":
        return "null"
    return "a number"
