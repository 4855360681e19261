"""Property tests over HTTP against one real server: any JSON body gets the contract's shape
and never a 5xx, valid events are always processed and stored as sent, and each rule
broken alone fails with its own code.

tests/test_validation.py proves the rules at the function level; these go through the
whole server (body splitting, account checks, the store, the answer) with generated input.
The server is started once for the module so that examples are cheap.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlevents import events as ev
from qlevents import validation
from qlevents.store.sqlite import SQLiteEventStore
from tests.support import RunningServer, free_port

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


def examples(count: int) -> settings:
    """The module's settings with ``count`` examples."""
    return settings(PROPERTY_SETTINGS, max_examples=count)


class Site:
    """The module's server, its demo account, and a cursor over what its store holds."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.key = server.client_key
        self.client = httpx.Client(timeout=30)
        self._store = SQLiteEventStore(server.data_dir / "events.sqlite3")
        self._position = 0

    def post(self, body: bytes) -> httpx.Response:
        return self.client.post(
            self.server.events_url, content=body, headers={"content-type": "application/json"}
        )

    def new_events(self) -> list[dict[str, Any]]:
        """The events stored since the last call, oldest first."""
        rows = self._store.read_sync(self._position, 100_000)
        if rows:
            self._position = rows[-1][0]
        return [json.loads(json.dumps(_as_dict(event))) for _, event in rows]


def _as_dict(event: Any) -> dict[str, Any]:
    import msgspec

    result: dict[str, Any] = msgspec.to_builtins(event)
    return result


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One server for every example of the module."""
    tmp = tmp_path_factory.mktemp("properties")
    server = RunningServer(tmp / "data", free_port(), [], tmp / "server.log")
    server.start()
    site = Site(server)
    try:
        yield site
    finally:
        site.client.close()
        if server.process is not None:
            server.stop(signal.SIGKILL)


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

TEXT = st.characters(exclude_categories=("Cs",))
NO_SPACE = st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"))


def bounded_text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Short text most of the time, and text of exactly the longest length allowed."""
    return st.text(TEXT, min_size=min_size, max_size=min(max_size, 24)) | st.text(
        TEXT, min_size=max_size, max_size=max_size
    )


def urls() -> st.SearchStrategy[str]:
    scheme = st.sampled_from(["http", "https", "HTTP", "Https", "hTtPs"])
    host = st.text(NO_SPACE.filter(lambda c: c not in "/?#@"), min_size=1, max_size=30)
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


@st.composite
def valid_events(draw: st.DrawFn, key: str) -> dict[str, Any]:
    """A valid view or conversion: required fields, some optional ones, unknown extras."""
    kind = draw(st.sampled_from(["view", "conversion"]))
    event: dict[str, Any] = draw(extra_fields)
    event.update(
        client_key=key,
        event=kind,
        price=draw(prices),
        product_id=draw(bounded_text(1, ev.MAX_PRODUCT_ID_LENGTH)),
    )
    optional: dict[str, st.SearchStrategy[Any]] = {
        "vid": st.none() | bounded_text(0, ev.MAX_VID_LENGTH),
        "tags": labels(ev.MAX_TAGS),
    }
    if kind == "view":
        event["permalink"] = draw(urls())
        optional["channels"] = labels(ev.MAX_CHANNELS)
    else:
        optional["channels"] = labels(ev.MAX_CONVERSION_CHANNELS)
        optional["units"] = st.none() | st.integers(1, ev.MAX_UNITS)
    for name, values in optional.items():
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


def common_breaks(field: str) -> st.SearchStrategy[tuple[Any, str]]:
    out_of_range = st.one_of(
        st.floats(max_value=-5e-324, allow_infinity=False),
        st.floats(min_value=ev.MAX_PRICE, exclude_min=True, allow_infinity=False),
        st.integers(max_value=-1),
        st.integers(min_value=int(ev.MAX_PRICE) + 1),
    )
    by_field: dict[str, st.SearchStrategy[tuple[Any, str]]] = {
        "client_key": st.one_of(
            st.just((MISSING, validation.MISSING_FIELD)),
            st.just(("", validation.EMPTY_VALUE)),
            not_strings.map(lambda v: (v, validation.INVALID_TYPE)),
            too_long(ev.MAX_KEY_LENGTH).map(lambda v: (v, validation.TOO_LONG)),
        ),
        "price": st.one_of(
            st.just((MISSING, validation.MISSING_FIELD)),
            not_numbers.map(lambda v: (v, validation.INVALID_TYPE)),
            out_of_range.map(lambda v: (v, validation.OUT_OF_RANGE)),
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
    }
    return by_field[field]


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


@st.composite
def broken_events(draw: st.DrawFn, key: str) -> tuple[dict[str, Any], tuple[str, str]]:
    """A valid event with exactly one rule broken, and the (field, code) it must fail with."""
    event = draw(valid_events(key))
    fields = ["client_key", "price", "product_id", "vid", "tags", "event", "channels"]
    fields += ["permalink"] if event["event"] == "view" else ["units"]
    field = draw(st.sampled_from(fields))
    if field in ("client_key", "price", "product_id", "vid", "tags", "event"):
        value, code = draw(common_breaks(field))
    elif field == "channels":
        most = ev.MAX_CHANNELS if event["event"] == "view" else ev.MAX_CONVERSION_CHANNELS
        value, code = draw(broken_labels(most))
    elif field == "permalink":
        value, code = draw(
            st.one_of(
                st.just((MISSING, validation.MISSING_FIELD)),
                not_strings.map(lambda v: (v, validation.INVALID_TYPE)),
                invalid_urls.map(lambda v: (v, validation.INVALID_URL)),
                st.just(("https://shop.example/" + "p" * ev.MAX_URL_LENGTH, validation.TOO_LONG)),
            )
        )
    else:  # units
        value, code = draw(
            st.one_of(
                (st.integers(max_value=0) | st.integers(min_value=ev.MAX_UNITS + 1)).map(
                    lambda v: (v, validation.OUT_OF_RANGE)
                ),
                not_ints.map(lambda v: (v, validation.INVALID_TYPE)),
            )
        )
    if value is MISSING:
        event.pop(field, None)
    else:
        event[field] = value
    return event, (field, code)


# --- the properties ----------------------------------------------------------------------------


class TestAnyJsonBody:
    @examples(300)
    @given(body=st.data())
    def test_answer_has_the_contract_shape_and_never_a_5xx(
        self, site: Site, body: st.DataObject
    ) -> None:
        """Any JSON value: 200 with every event in processed or failed, or 400 not_an_array."""
        loose_event = st.fixed_dictionaries(
            {},
            optional={
                "client_key": st.just(site.key) | st.text(max_size=4),
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
        value = body.draw(
            json_values | loose_event | st.lists(loose_event | json_values, max_size=20)
        )
        answer = site.post(encode(value))
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


class TestValidEvents:
    @examples(200)
    @given(data=st.data())
    def test_valid_events_are_always_processed_and_stored_as_sent(
        self, site: Site, data: st.DataObject
    ) -> None:
        """A batch of events valid by the rules: all processed, in order, stored exactly."""
        sent = data.draw(st.lists(valid_events(site.key), min_size=1, max_size=8))
        payload = assert_contract(site.post(encode(sent)), sent)
        assert payload["failed"] == [] and payload["errors"] == []
        processed = payload["processed"]
        assert [expected_stored(e) for e in sent] == [
            {k: v for k, v in e.items() if k not in ("id", "received_at")} for e in processed
        ]
        assert site.new_events() == processed


class TestEachRuleBrokenAlone:
    @examples(400)
    @given(data=st.data())
    def test_broken_event_fails_with_its_code_and_the_others_pass(
        self, site: Site, data: st.DataObject
    ) -> None:
        """Events with one rule broken each fail with exactly that (field, code); valid
        events beside them in the same batch are processed."""
        batch = data.draw(
            st.lists(
                broken_events(site.key) | valid_events(site.key).map(lambda e: (e, None)),
                min_size=1,
                max_size=6,
            ).filter(lambda b: any(expected is not None for _, expected in b))
        )
        sent = [event for event, _ in batch]
        payload = assert_contract(site.post(encode(sent)), sent)
        errors = [(e["index"], e["field"], e["code"]) for e in payload["errors"]]
        expected = [(i, *want) for i, (_, want) in enumerate(batch) if want is not None]
        assert errors == expected
        valid = sum(1 for _, want in batch if want is None)
        assert len(payload["processed"]) == valid
        assert len(site.new_events()) == valid
