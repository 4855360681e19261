"""Building events at the call site: check them with the server's own rules, encode once.

Everything here runs in the caller's thread, so it is kept short: one dict, one
``convert_event`` (the validation code the server runs), one msgspec encode.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import msgspec

from qlevents._exceptions import ClientError, EventValidationError
from qlevents.events import (
    MAX_BODY_BYTES,
    MAX_EVENTS_PER_REQUEST,
    ConversionEvent,
    ViewEvent,
    permalink_ok,
)
from qlevents.validation import INVALID_TEXT, INVALID_VALUE, Problem, convert_event

_encode: Final = msgspec.json.Encoder().encode
#: One encoded event, ready to be joined into a request body.
Encoded = bytes


def _encoded(event: ViewEvent | ConversionEvent) -> Encoded:
    try:
        return _encode(event)
    except UnicodeEncodeError as exc:  # a lone surrogate in a str: not sendable as JSON
        raise EventValidationError(
            [Problem(None, INVALID_TEXT, f"the event holds text that is not valid Unicode: {exc}.")]
        ) from None


def _checked(
    event: Mapping[str, Any], kind: type[ViewEvent] | type[ConversionEvent]
) -> ViewEvent | ConversionEvent:
    # The struct types of qlevents.events are the rules. Converting to the one kind we built
    # is what convert_event does, minus resolving the union on every call (~2 us of 3); on
    # failure convert_event itself lists every problem, as the server would.
    try:
        checked: ViewEvent | ConversionEvent = msgspec.convert(event, kind)
        if permalink_ok(checked):
            return checked
    except msgspec.ValidationError:
        pass
    result = convert_event(event)
    if isinstance(result, list):
        raise EventValidationError(result)
    return result  # pragma: no cover - both paths apply the same types


def view(
    client_key: str,
    product_id: Any,
    price: Any,
    permalink: Any,
    *,
    vid: Any = None,
    tags: Any = None,
    channels: Any = None,
) -> Encoded:
    """A product page view, checked and encoded; raises EventValidationError."""
    event: dict[str, Any] = {
        "event": "view",
        "client_key": client_key,
        "product_id": product_id,
        "price": price,
        "permalink": permalink,
    }
    if vid is not None:
        event["vid"] = vid
    if tags is not None:
        event["tags"] = tags
    if channels is not None:
        event["channels"] = channels
    return _encoded(_checked(event, ViewEvent))


def total_price(unit_price: Any, units: Any) -> Any:
    """``unit_price x units`` computed in decimal, so 10.1 x 3 is 30.3, not 30.299999999999997.

    Values that are not numbers are returned as given: validation then reports them.
    """
    count = 1 if units is None else units
    if isinstance(count, bool) or not isinstance(count, int):
        return unit_price
    if isinstance(unit_price, bool) or not isinstance(unit_price, int | float | Decimal):
        return unit_price
    try:
        exact = Decimal(repr(unit_price)) if isinstance(unit_price, float) else Decimal(unit_price)
        total = float(exact * count)
    except (InvalidOperation, OverflowError, ValueError):
        return unit_price
    return total if math.isfinite(total) else unit_price


def conversion(
    client_key: str,
    product_id: Any,
    price: Any = None,
    *,
    unit_price: Any = None,
    units: Any = None,
    vid: Any = None,
    tags: Any = None,
    channels: Any = None,
) -> Encoded:
    """A sale of one product, checked and encoded; raises EventValidationError."""
    if (price is None) == (unit_price is None):
        raise EventValidationError(
            [
                Problem(
                    "price",
                    INVALID_VALUE,
                    "give exactly one of price (the total for all units) or unit_price"
                    f" (multiplied by units); got {'both' if price is not None else 'neither'}.",
                )
            ]
        )
    if isinstance(price, Decimal):
        price = float(price)
    event: dict[str, Any] = {
        "event": "conversion",
        "client_key": client_key,
        "product_id": product_id,
        "price": price if unit_price is None else total_price(unit_price, units),
    }
    if units is not None:
        event["units"] = units
    if vid is not None:
        event["vid"] = vid
    if tags is not None:
        event["tags"] = tags
    if channels is not None:
        event["channels"] = channels
    return _encoded(_checked(event, ConversionEvent))


def group(events: Iterable[Any], client_key: str | None) -> tuple[Encoded, ...]:
    """Check and encode events given together (dicts or event structs); they travel together.

    A dict without ``client_key`` gets ``client_key``. Raises EventValidationError naming
    the position of every broken event, or ClientError when they cannot fit one request.
    """
    encoded: list[Encoded] = []
    problems: list[Problem] = []
    size = 2
    for index, event in enumerate(events):
        if isinstance(event, ViewEvent | ConversionEvent):
            encoded.append(_encoded(event))
        else:
            given = event
            if isinstance(event, Mapping) and "client_key" not in event and client_key:
                given = {"client_key": client_key, **event}
            result = convert_event(given)
            if isinstance(result, list):
                problems.extend(_at(index, p) for p in result)
                continue
            encoded.append(_encoded(result))
        size += len(encoded[-1]) + 1
    if problems:
        raise EventValidationError(problems)
    if len(encoded) > MAX_EVENTS_PER_REQUEST or size > MAX_BODY_BYTES:
        raise ClientError(
            f"{len(encoded)} events of {size} bytes cannot travel in one request (the limits"
            f" are {MAX_EVENTS_PER_REQUEST} events and {MAX_BODY_BYTES} bytes); give fewer at once."
        )
    return tuple(encoded)


def _at(index: int, problem: Problem) -> Problem:
    field = f"[{index}]" if problem.field is None else f"[{index}].{problem.field}"
    return Problem(field, problem.code, f"event {index}: {problem.message}")


_decode_dict: Final = msgspec.json.Decoder(dict[str, Any]).decode


def as_dict(event: Encoded) -> dict[str, Any]:
    """An encoded event as the dict given to ``on_failure``."""
    return _decode_dict(event)


def body(events: Sequence[Encoded]) -> bytes:
    """The JSON array of the request that carries ``events``."""
    return b"[" + b",".join(events) + b"]"


class EventMethods:
    """``view``, ``conversion`` and ``enqueue``: the same for Client and AsyncClient, which
    differ only in how ``_enqueue`` hands a group of encoded events to their sender."""

    client_key: str

    def _enqueue(self, group: tuple[Encoded, ...]) -> None:
        raise NotImplementedError

    def view(
        self,
        product_id: str,
        price: float,
        permalink: str,
        *,
        vid: str | None = None,
        tags: list[str] | None = None,
        channels: list[str] | None = None,
    ) -> None:
        """Queue a product page view; raises EventValidationError if it breaks a rule."""
        self._enqueue(
            (
                view(
                    self.client_key,
                    product_id,
                    price,
                    permalink,
                    vid=vid,
                    tags=tags,
                    channels=channels,
                ),
            )
        )

    def conversion(
        self,
        product_id: str,
        price: float | None = None,
        *,
        unit_price: float | None = None,
        units: int | None = None,
        vid: str | None = None,
        tags: list[str] | None = None,
        channels: list[str] | None = None,
    ) -> None:
        """Queue a sale: give ``price`` (the total) or ``unit_price`` (times ``units``)."""
        self._enqueue(
            (
                conversion(
                    self.client_key,
                    product_id,
                    price,
                    unit_price=unit_price,
                    units=units,
                    vid=vid,
                    tags=tags,
                    channels=channels,
                ),
            )
        )

    def enqueue(self, events: Iterable[Any]) -> None:
        """Queue events that must travel together (a checkout's conversions): one request."""
        encoded = group(events, self.client_key)
        if encoded:
            self._enqueue(encoded)
