"""The event types of the API contract, as msgspec structs, and their limits.

These types are the single source of truth for what a valid event is: the server decodes
request bodies with them and the SDK checks events with them before queueing.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

import msgspec
from msgspec import Meta, Struct

#: The API's request limits: most events in one request, and the largest body (bytes, after
#: gzip decompression). The server's defaults and the SDK's batch limits are these.
MAX_EVENTS_PER_REQUEST: Final = 1000
MAX_BODY_BYTES: Final = 5 * 1024 * 1024
#: Longest client key, product id, vid, tag or channel accepted (characters).
MAX_KEY_LENGTH: Final = 128
MAX_PRODUCT_ID_LENGTH: Final = 256
MAX_VID_LENGTH: Final = 256
MAX_LABEL_LENGTH: Final = 128
#: Longest permalink accepted (characters).
MAX_URL_LENGTH: Final = 2048
#: Most tags / channels on one event. A conversion holds at most one channel (the spec).
MAX_TAGS: Final = 64
MAX_CHANNELS: Final = 16
MAX_CONVERSION_CHANNELS: Final = 1
#: Highest price accepted: beyond ~1e13 a float cannot hold cents exactly any more.
MAX_PRICE: Final = 1e12
MAX_UNITS: Final = 1_000_000
#: An absolute http(s) URL: scheme (any case), "://", then a non-empty host part, and no
#: whitespace anywhere. Written without inline flags so that it means the same in JSON Schema
#: (ECMA-262) as in Python.
_URL: Final = r"[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+(?:[/?#]\S*)?"
URL_PATTERN: Final = f"^{_URL}$"
_URL_RE: Final = re.compile(_URL)
#: URLs one per line: a URL holds no whitespace, so a line break can only separate two.
_URL_LINES_RE: Final = re.compile(f"{_URL}(?:\n{_URL})*")

ClientKey = Annotated[str, Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
ProductId = Annotated[str, Meta(min_length=1, max_length=MAX_PRODUCT_ID_LENGTH)]
Price = Annotated[float, Meta(ge=0, le=MAX_PRICE)]
#: The URL form is not checked by msgspec (a ``pattern`` costs ~0.5 us per event there, 60% of
#: decoding a 100-event request) but by :func:`is_permalink` / :func:`are_permalinks`, which
#: every decoder of these types must call; the JSON Schema still says it.
Permalink = Annotated[
    str, Meta(max_length=MAX_URL_LENGTH, extra_json_schema={"pattern": URL_PATTERN})
]
Vid = Annotated[str, Meta(max_length=MAX_VID_LENGTH)]
Label = Annotated[str, Meta(max_length=MAX_LABEL_LENGTH)]
Tags = Annotated[list[Label], Meta(max_length=MAX_TAGS)]
Channels = Annotated[list[Label], Meta(max_length=MAX_CHANNELS)]
ConversionChannels = Annotated[list[Label], Meta(max_length=MAX_CONVERSION_CHANNELS)]
Units = Annotated[int, Meta(ge=1, le=MAX_UNITS)]


def is_permalink(value: str) -> bool:
    """Whether ``value`` is an absolute http(s) URL (all of it matches URL_PATTERN)."""
    return _URL_RE.fullmatch(value) is not None


def are_permalinks(values: list[str]) -> bool:
    """Whether every one of ``values`` is_permalink, found with one regex match for all."""
    if not values:
        return True
    lines = "\n".join(values)
    # A value holding a line break would pass as two URLs; it is no URL, but let the
    # one-by-one check say so.
    if lines.count("\n") != len(values) - 1:
        return all(is_permalink(value) for value in values)
    return _URL_LINES_RE.fullmatch(lines) is not None


def permalink_ok(event: ViewEvent | ConversionEvent) -> bool:
    """False only for a view event whose permalink is not an absolute http(s) URL: the one
    rule that decoding into these types does not check."""
    return type(event) is not ViewEvent or is_permalink(event.permalink)


class ViewEvent(Struct, tag_field="event", tag="view", kw_only=True, gc=False):
    """A product page view. Fields the contract does not define are ignored."""

    # Decoding checks every rule but the permalink's URL form: see is_permalink().

    client_key: ClientKey
    price: Price
    product_id: ProductId
    permalink: Permalink
    vid: Vid | None = None
    tags: Tags = []
    channels: Channels = []


class ConversionEvent(Struct, tag_field="event", tag="conversion", kw_only=True, gc=False):
    """A sale of one product; ``price`` is the total for all ``units``."""

    client_key: ClientKey
    price: Price
    product_id: ProductId
    vid: Vid | None = None
    tags: Tags = []
    channels: ConversionChannels = []
    units: Units | None = None


Event = ViewEvent | ConversionEvent
# The event structs are created by the hundred per request and hold only strings, numbers
# and lists of strings: they can never be part of a reference cycle, so they are kept out of
# the cyclic garbage collector (gc=False), which would otherwise walk them on every pass.


class StoredEvent(Struct, kw_only=True, gc=False):
    """An accepted event as the store holds it and the API returns it in ``processed``."""

    id: str
    received_at: str
    client_key: str
    event: str
    product_id: str
    price: float
    units: int | None = None
    vid: str | None = None
    permalink: str | None = None
    tags: list[str] = []
    channels: list[str] = []

    @classmethod
    def from_event(cls, event: Event, event_id: str, received_at: str) -> StoredEvent:
        """``event`` as accepted: with the id and receive time the server gave it."""
        if isinstance(event, ViewEvent):
            return cls(
                id=event_id,
                received_at=received_at,
                client_key=event.client_key,
                event="view",
                product_id=event.product_id,
                price=event.price,
                vid=event.vid,
                permalink=event.permalink,
                tags=event.tags,
                channels=event.channels,
            )
        return cls(
            id=event_id,
            received_at=received_at,
            client_key=event.client_key,
            event="conversion",
            product_id=event.product_id,
            price=event.price,
            units=event.units,
            vid=event.vid,
            tags=event.tags,
            channels=event.channels,
        )


class ErrorEntry(Struct, omit_defaults=True):
    """One problem in a request: ``index`` is the event's position, or null for the request."""

    index: int | None
    field: str | None
    code: str
    message: str
    #: Set on ``wrong_endpoint`` errors: where the event's account is homed.
    endpoint: str | None = None


class EventsResponse(Struct):
    """The body of every answer of POST /events (the spec's shape)."""

    processed: list[StoredEvent] = []
    failed: list[msgspec.Raw] = []
    errors: list[ErrorEntry] = []
