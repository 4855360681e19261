"""Property tests through the whole app: any JSON body gets the contract's shape and never
a 5xx, valid events are always processed and stored as sent, and each rule broken alone
fails with its own code.

tests/test_validation.py proves the rules at the function level; these go through the
whole request path (body splitting, account checks, the store, the answer) with generated
input, sent with a Content-Length, chunked, or gzipped. Most examples run in this process
(``LocalApp``: the app through ASGI, the memory store), where the app's part costs about a
millisecond beside hypothesis' own work; a few dozen in all go over HTTP to a real server
and its SQLite store, so that the path through the wire and the disk is proven with the
same properties.

``make test`` runs 450 examples in process; ``make reliability`` runs ten times as many
(``QLEVENTS_PROPERTY_SCALE=10``), like any deeper search a change to validation deserves.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlevents import events as ev
from qlevents import validation
from tests.support import LocalApp, RunningServer

# Every per-event error code of the contract: the rules', then the account checks'.
EVENT_CODES = {
    validation.NOT_AN_OBJECT,
    validation.MISSING_FIELD,
    validation.INVALID_TYPE,
    validation.EMPTY_VALUE,
    validation.TOO_LONG,
    validation.OUT_OF_RANGE,
    validation.INVALID_URL,
    validation.TOO_MANY_ITEMS,
    validation.UNKNOWN_EVENT,
    validation.INVALID_TEXT,
    "duplicate_field",
    "unknown_client_key",
    "disabled_client_key",
    "wrong_endpoint",
}
PROPERTY_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


#: How a body is sent: each property holds for each.
framings = st.sampled_from(["content-length", "chunked", "gzip"])
#: Examples of each property in this process (times QLEVENTS_PROPERTY_SCALE), and over HTTP
#: to a real server.
SCALE = float(os.environ.get("QLEVENTS_PROPERTY_SCALE", "1"))


def scaled(count: int) -> int:
    return max(1, round(count * SCALE))


IN_PROCESS = {
    name: scaled(count) for name, count in {"any_json": 200, "valid": 100, "broken": 150}.items()
}
OVER_HTTP = 15


def examples(count: int) -> settings:
    """The module's settings with ``count`` examples."""
    return settings(PROPERTY_SETTINGS, max_examples=count)


class Site:
    """Where a property sends its bodies: the app in this process or a real server, an
    account of the property's own there, and a cursor over what the store holds for it."""

    def __init__(self, target: LocalApp | RunningServer) -> None:
        self.target = target
        self.key = target.create_account("properties")
        self._position = 0

    def post(self, body: bytes, framing: str) -> httpx.Response:
        """POST ``body`` with a Content-Length, in chunks without one, or gzipped."""
        headers = {"content-type": "application/json"}
        if framing == "chunked":
            third = len(body) // 3 + 1
            chunks = [body[i : i + third] for i in range(0, len(body), third)]
            return self.target.post_chunks(chunks, headers=headers)
        if framing == "gzip":
            headers["content-encoding"] = "gzip"
            return self.target.post(gzip.compress(body), headers=headers)
        return self.target.post(body, headers=headers)

    def new_events(self) -> list[dict[str, Any]]:
        """The account's events stored since the last call, oldest first."""
        rows = self.target.read(self._position, self.key, limit=100_000)
        if rows:
            self._position = rows[-1][0]
        return [event for _, event in rows]


@pytest.fixture(scope="module")
def in_process(local_app: LocalApp) -> Site:
    """The app in this process, with the memory store."""
    return Site(local_app)


@pytest.fixture(scope="module")
def over_http(shared_server: RunningServer) -> Site:
    """A real server (uvicorn, the SQLite store), over loopback HTTP."""
    return Site(shared_server)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def assert_contract(answer: httpx.Response, sent: list[Any]) -> dict[str, Any]:
    """The spec's shape: each input event in processed or failed, failed in input order."""
    assert answer.status_code == 200, answer.text[:500]
    assert answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = answer.json()
    assert set(body) == {"processed", "failed", "errors"}
    assert len(body["processed"]) + len(body["failed"]) == len(sent)
    indexes = sorted({e["index"] for e in body["errors"]})
    assert body["failed"] == [sent[i] for i in indexes]
    for error in body["errors"]:
        assert error["code"] in EVENT_CODES, error
        assert isinstance(error["message"], str) and error["message"]
    assert len({e["id"] for e in body["processed"]}) == len(body["processed"])
    return body


# --- strategies: any JSON ------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)

# --- strategies: valid events, from the limits in qlevents.events ----------------------------
#
# Built once at import, not inside the composites: hypothesis validates every strategy it
# is handed, and doing that per example cost more than the example itself.

TEXT = st.characters(exclude_categories=("Cs",))
NO_SPACE = st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"))


def bounded_text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Short text most of the time, and text of exactly the longest length allowed."""
    return st.text(TEXT, min_size=min_size, max_size=min(max_size, 24)) | st.text(
        TEXT, min_size=max_size, max_size=max_size
    )


def urls() -> st.SearchStrategy[str]:
    scheme = st.sampled_from(["http", "https", "HTTP", "Https", "hTtPs"])
    host_characters = st.characters(
        exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters="/?#@"
    )
    host = st.text(host_characters, min_size=1, max_size=30)
    rest = st.just("") | st.tuples(st.sampled_from("/?#"), st.text(NO_SPACE, max_size=40)).map(
        "".join
    )
    url = st.builds(lambda s, h, r: f"{s}://{h}{r}", scheme, host, rest)
    longest = st.just("https://shop.example/" + "p" * (ev.MAX_URL_LENGTH - 21))
    return (url | longest).filter(lambda u: len(u) <= ev.MAX_URL_LENGTH and ev.is_permalink(u))


def labels(max_items: int) -> st.SearchStrategy[list[str]]:
    return st.lists(bounded_text(0, ev.MAX_LABEL_LENGTH), max_size=max_items) | st.lists(
        st.text(TEXT, max_size=3), min_size=max_items, max_size=max_items
    )


prices = st.floats(min_value=0, max_value=ev.MAX_PRICE) | st.integers(0, int(ev.MAX_PRICE))
KNOWN_FIELDS = {
    "client_key", "event", "price", "product_id", "permalink", "vid", "tags", "channels", "units"
}  # fmt: skip
extra_fields = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in KNOWN_FIELDS), json_values, max_size=2
)


product_ids = bounded_text(1, ev.MAX_PRODUCT_ID_LENGTH)
permalinks = urls()
vids = st.none() | bounded_text(0, ev.MAX_VID_LENGTH)
tags = labels(ev.MAX_TAGS)
#: The optional fields of each kind of event, and their valid values.
OPTIONAL: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "view": {"vid": vids, "tags": tags, "channels": labels(ev.MAX_CHANNELS)},
    "conversion": {
        "vid": vids,
        "tags": tags,
        "channels": labels(ev.MAX_CONVERSION_CHANNELS),
        "units": st.none() | st.integers(1, ev.MAX_UNITS),
    },
}


@st.composite
def valid_events(draw: st.DrawFn, key: str) -> dict[str, Any]:
    """A valid view or conversion: required fields, some optional ones, unknown extras."""
    kind = draw(st.sampled_from(["view", "conversion"]))
    event: dict[str, Any] = draw(extra_fields)
    event.update(client_key=key, event=kind, price=draw(prices), product_id=draw(product_ids))
    if kind == "view":
        event["permalink"] = draw(permalinks)
    for name, values in OPTIONAL[kind].items():
        if draw(st.booleans()):
            event[name] = draw(values)
    items = list(event.items())
    order = draw(st.permutations(range(len(items))))
    return {items[i][0]: items[i][1] for i in order}


def expected_stored(event: dict[str, Any]) -> dict[str, Any]:
    """What the server must store for a valid event (defaults filled, extras dropped)."""
    return {
        "client_key": event["client_key"],
        "event": event["event"],
        "product_id": event["product_id"],
        "price": float(event["price"]),
        "units": event.get("units"),
        "vid": event.get("vid"),
        "permalink": event.get("permalink") if event["event"] == "view" else None,
        "tags": event.get("tags", []),
        "channels": event.get("channels", []),
    }


# --- strategies: one rule broken -------------------------------------------------------------

MISSING = object()
not_strings = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=3), scalars, max_size=2)  # noqa: E501  # fmt: skip
not_numbers = st.none() | st.booleans() | st.text() | st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=3), scalars, max_size=2)  # noqa: E501  # fmt: skip
not_text_nor_null = st.booleans() | st.integers() | st.lists(scalars, max_size=2)
not_lists = st.none() | st.booleans() | st.integers() | st.text() | st.dictionaries(st.text(max_size=3), scalars, max_size=2)  # noqa: E501  # fmt: skip
not_ints = (
    st.booleans()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False)  # 2.0 too: JSON "2.0" is not an int
    | st.lists(scalars, max_size=2)
)


def too_long(limit: int) -> st.SearchStrategy[str]:
    return st.text(TEXT, min_size=limit + 1, max_size=limit + 40)


def broken_labels(max_items: int) -> st.SearchStrategy[tuple[Any, str]]:
    """A labels array that breaks exactly one rule, with that rule's code."""
    return st.one_of(
        not_lists.map(lambda v: (v, validation.INVALID_TYPE)),
        st.lists(st.text(max_size=3), min_size=max_items + 1, max_size=max_items + 5).map(
            lambda v: (v, validation.TOO_MANY_ITEMS)
        ),
        not_strings.map(lambda v: ([v], validation.INVALID_TYPE)),
        too_long(ev.MAX_LABEL_LENGTH).map(lambda v: ([v], validation.TOO_LONG)),
    )


out_of_range_prices = st.one_of(
    st.floats(max_value=-5e-324, allow_infinity=False),
    st.floats(min_value=ev.MAX_PRICE, exclude_min=True, allow_infinity=False),
    st.integers(max_value=-1),
    st.integers(min_value=int(ev.MAX_PRICE) + 1),
)
invalid_urls = (
    st.sampled_from(
        [
            "/relative",
            "ftp://shop/x",
            "https://",
            "https:// x",
            "http://a b",
            "x",
            "https://shop.example/p\n",
            "https://shop.example/a\nhttps://shop.example/b",
        ]
    )
    | st.text(max_size=30)
).filter(lambda u: not ev.is_permalink(u))
#: For each field, the values that break one of its rules, each with that rule's code
#: (``channels`` by kind of event: a conversion has at most one).
BREAKS: dict[str, st.SearchStrategy[tuple[Any, str]]] = {
    "client_key": st.one_of(
        st.just((MISSING, validation.MISSING_FIELD)),
        st.just(("", validation.EMPTY_VALUE)),
        not_strings.map(lambda v: (v, validation.INVALID_TYPE)),
        too_long(ev.MAX_KEY_LENGTH).map(lambda v: (v, validation.TOO_LONG)),
    ),
    "price": st.one_of(
        st.just((MISSING, validation.MISSING_FIELD)),
        not_numbers.map(lambda v: (v, validation.INVALID_TYPE)),
        out_of_range_prices.map(lambda v: (v, validation.OUT_OF_RANGE)),
    ),
    "product_id": st.one_of(
        st.just((MISSING, validation.MISSING_FIELD)),
        st.just(("", validation.EMPTY_VALUE)),
        not_strings.map(lambda v: (v, validation.INVALID_TYPE)),
        too_long(ev.MAX_PRODUCT_ID_LENGTH).map(lambda v: (v, validation.TOO_LONG)),
    ),
    "vid": st.one_of(
        not_text_nor_null.map(lambda v: (v, validation.INVALID_TYPE)),
        too_long(ev.MAX_VID_LENGTH).map(lambda v: (v, validation.TOO_LONG)),
    ),
    "tags": broken_labels(ev.MAX_TAGS),
    "event": st.one_of(
        st.just((MISSING, validation.MISSING_FIELD)),
        (st.text() | not_strings)
        .filter(lambda v: v not in ("view", "conversion"))
        .map(lambda v: (v, validation.UNKNOWN_EVENT)),
    ),
    "view channels": broken_labels(ev.MAX_CHANNELS),
    "conversion channels": broken_labels(ev.MAX_CONVERSION_CHANNELS),
    "permalink": st.one_of(
        st.just((MISSING, validation.MISSING_FIELD)),
        not_strings.map(lambda v: (v, validation.INVALID_TYPE)),
        invalid_urls.map(lambda v: (v, validation.INVALID_URL)),
        st.just(("https://shop.example/" + "p" * ev.MAX_URL_LENGTH, validation.TOO_LONG)),
    ),
    "units": st.one_of(
        (st.integers(max_value=0) | st.integers(min_value=ev.MAX_UNITS + 1)).map(
            lambda v: (v, validation.OUT_OF_RANGE)
        ),
        not_ints.map(lambda v: (v, validation.INVALID_TYPE)),
    ),
}


@st.composite
def broken_events(draw: st.DrawFn, key: str) -> tuple[dict[str, Any], tuple[str, str]]:
    """A valid event with exactly one rule broken, and the (field, code) it must fail with."""
    event = draw(valid_events(key))
    fields = ["client_key", "price", "product_id", "vid", "tags", "event", "channels"]
    fields += ["permalink"] if event["event"] == "view" else ["units"]
    field = draw(st.sampled_from(fields))
    breaks = f"{event['event']} channels" if field == "channels" else field
    value, code = draw(BREAKS[breaks])
    if value is MISSING:
        event.pop(field, None)
    else:
        event[field] = value
    return event, (field, code)


# --- the properties ----------------------------------------------------------------------------
#
# Strategies are built once per client key: hypothesis validates a strategy on its first
# draw, which for these costs more than running an example in process.


@functools.cache
def any_json_bodies(key: str) -> st.SearchStrategy[Any]:
    """Any JSON value, including arrays of loose events that name ``key`` or not."""
    loose_event = st.fixed_dictionaries(
        {},
        optional={
            "client_key": st.just(key) | st.text(max_size=4),
            "event": st.sampled_from(["view", "conversion"]) | json_values,
            "price": prices | json_values,
            "product_id": st.text(max_size=4) | json_values,
            "permalink": urls() | json_values,
            "vid": json_values,
            "tags": json_values,
            "channels": json_values,
            "units": st.integers(-1, 3) | json_values,
        },
    )
    return json_values | loose_event | st.lists(loose_event | json_values, max_size=20)


@functools.cache
def valid_batches(key: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(valid_events(key), min_size=1, max_size=8)


@functools.cache
def broken_batches(key: str) -> st.SearchStrategy[list[tuple[dict[str, Any], Any]]]:
    """Batches of events, each valid or with one rule broken (and the error it must get);
    at least one broken."""
    return st.lists(
        broken_events(key) | valid_events(key).map(lambda e: (e, None)), min_size=1, max_size=6
    ).filter(lambda b: any(expected is not None for _, expected in b))


def any_json_body_gets_the_contract_shape(site: Site, body: st.DataObject) -> None:
    value = body.draw(any_json_bodies(site.key))
    answer = site.post(encode(value), body.draw(framings))
    assert answer.status_code < 500, answer.text[:500]
    stored = site.new_events()
    if isinstance(value, list | dict):
        sent = value if isinstance(value, list) else [value]
        payload = assert_contract(answer, sent)
        assert all(e["code"] != validation.INVALID_VALUE for e in payload["errors"])
        assert [e["id"] for e in stored] == [e["id"] for e in payload["processed"]]
    else:
        assert answer.status_code == 400
        assert answer.json() == {
            "processed": [],
            "failed": [],
            "errors": [
                {
                    "index": None,
                    "field": None,
                    "code": "not_an_array",
                    "message": answer.json()["errors"][0]["message"],
                }
            ],
        }
        assert stored == []


def valid_events_are_processed_and_stored_as_sent(site: Site, data: st.DataObject) -> None:
    sent = data.draw(valid_batches(site.key))
    payload = assert_contract(site.post(encode(sent), data.draw(framings)), sent)
    assert payload["failed"] == [] and payload["errors"] == []
    processed = payload["processed"]
    assert [expected_stored(e) for e in sent] == [
        {k: v for k, v in e.items() if k not in ("id", "received_at")} for e in processed
    ]
    assert site.new_events() == processed


def broken_events_fail_with_their_code(site: Site, data: st.DataObject) -> None:
    batch = data.draw(broken_batches(site.key))
    sent = [event for event, _ in batch]
    payload = assert_contract(site.post(encode(sent), data.draw(framings)), sent)
    errors = [(e["index"], e["field"], e["code"]) for e in payload["errors"]]
    expected = [(i, *want) for i, (_, want) in enumerate(batch) if want is not None]
    assert errors == expected
    valid = sum(1 for _, want in batch if want is None)
    assert len(payload["processed"]) == valid
    assert len(site.new_events()) == valid


class TestAnyJsonBody:
    @examples(IN_PROCESS["any_json"])
    @given(body=st.data())
    def test_answer_has_the_contract_shape_and_never_a_5xx(
        self, in_process: Site, body: st.DataObject
    ) -> None:
        """Any JSON value: 200 with every event in processed or failed, or 400 not_an_array."""
        any_json_body_gets_the_contract_shape(in_process, body)

    @examples(OVER_HTTP)
    @given(body=st.data())
    def test_the_same_over_http_to_the_sqlite_store(
        self, over_http: Site, body: st.DataObject
    ) -> None:
        """The same, through a real server's socket to its SQLite store."""
        any_json_body_gets_the_contract_shape(over_http, body)


class TestValidEvents:
    @examples(IN_PROCESS["valid"])
    @given(data=st.data())
    def test_valid_events_are_always_processed_and_stored_as_sent(
        self, in_process: Site, data: st.DataObject
    ) -> None:
        """A batch of events valid by the rules: all processed, in order, stored exactly."""
        valid_events_are_processed_and_stored_as_sent(in_process, data)

    @examples(OVER_HTTP)
    @given(data=st.data())
    def test_the_same_over_http_to_the_sqlite_store(
        self, over_http: Site, data: st.DataObject
    ) -> None:
        """The same, through a real server's socket to its SQLite store."""
        valid_events_are_processed_and_stored_as_sent(over_http, data)


class TestEachRuleBrokenAlone:
    @examples(IN_PROCESS["broken"])
    @given(data=st.data())
    def test_broken_event_fails_with_its_code_and_the_others_pass(
        self, in_process: Site, data: st.DataObject
    ) -> None:
        """Events with one rule broken each fail with exactly that (field, code); valid
        events beside them in the same batch are processed."""
        broken_events_fail_with_their_code(in_process, data)

    @examples(OVER_HTTP)
    @given(data=st.data())
    def test_the_same_over_http_to_the_sqlite_store(
        self, over_http: Site, data: st.DataObject
    ) -> None:
        """The same, through a real server's socket to its SQLite store."""
        broken_events_fail_with_their_code(over_http, data)
