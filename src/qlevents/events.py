"""The event types of the API contract, as msgspec structs, and their limits.

These types are the single source of truth for what a valid event is: the server decodes
request bodies with them and the SDK checks events with them before queueing.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from msgspec import Meta, Struct

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
#: An absolute http(s) URL: scheme (any case), "://", then a non-empty host part. Written
#: without inline flags so that it means the same in JSON Schema (ECMA-262) as in Python.
URL_PATTERN: Final = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+(?:[/?#]\S*)?$"

ClientKey = Annotated[str, Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
ProductId = Annotated[str, Meta(min_length=1, max_length=MAX_PRODUCT_ID_LENGTH)]
Price = Annotated[float, Meta(ge=0, le=MAX_PRICE)]
Permalink = Annotated[str, Meta(max_length=MAX_URL_LENGTH, pattern=URL_PATTERN)]
Vid = Annotated[str, Meta(max_length=MAX_VID_LENGTH)]
Label = Annotated[str, Meta(max_length=MAX_LABEL_LENGTH)]
Tags = Annotated[list[Label], Meta(max_length=MAX_TAGS)]
Channels = Annotated[list[Label], Meta(max_length=MAX_CHANNELS)]
ConversionChannels = Annotated[list[Label], Meta(max_length=MAX_CONVERSION_CHANNELS)]
Units = Annotated[int, Meta(ge=1, le=MAX_UNITS)]


class ViewEvent(Struct, tag_field="event", tag="view", kw_only=True, gc=False):
    """A product page view. Fields the contract does not define are ignored."""

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
