"""Size and shape attacks on POST /events: each gets a clear answer in the contract's shape,
without the server buffering or inflating past its limit.

Complements tests/server/test_events_api.py (which has the basic 413/400 cases): here the
exact boundaries, chunked and raw-socket bodies, gzip bombs, deep nesting, huge numbers and
strings, non-finite literals, invalid UTF-8 and duplicate keys.

What the wire carries (sizes against Content-Length or chunked framing, answers before the
body ends, memory while inflating, what reaches the SQLite store) is sent to a real server;
what is about the body's content is sent to the app in this process (``LocalApp``).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import LocalApp, RunningServer, conversion, post, running_server, view

LIMIT = 5 * 1024 * 1024  # the server's default --max-body-bytes
HUGE = 512 * 1024  # a "huge" string: far over every field limit, well under the body limit


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server with default limits for the whole module."""
    with running_server(tmp_path_factory.mktemp("hostile")) as running:
        yield running


@pytest.fixture(scope="module")
def key(server: RunningServer) -> str:
    return server.client_key


@pytest.fixture(scope="module")
def app(local_app: LocalApp) -> LocalApp:
    """The app in this process, for attacks on the body's content."""
    return local_app


@pytest.fixture(scope="module")
def app_key(app: LocalApp) -> str:
    return app.create_account("hostile")


def parsed(answer: httpx.Response) -> dict[str, Any]:
    """The JSON body; numbers too long for int() (echoed failed events) stay text."""
    body: dict[str, Any] = json.loads(answer.text, parse_int=_int_or_text)
    return body


def _int_or_text(text: str) -> int | str:
    return int(text) if len(text) <= 100 else text


def request_error(answer: httpx.Response, status: int) -> dict[str, Any]:
    """Assert a whole-request error in the contract's shape; return its one error entry."""
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["content-type"] == "application/json"
    body = parsed(answer)
    assert body["processed"] == [] and body["failed"] == []
    [error] = body["errors"]
    assert error["index"] is None and error["field"] is None
    assert error["message"].endswith(".")
    return dict(error)


def event_errors(answer: httpx.Response) -> list[tuple[int, str | None, str]]:
    """The (index, field, code) of each error of a 200 answer."""
    assert answer.status_code == 200, answer.text[:300]
    return [(e["index"], e["field"], e["code"]) for e in parsed(answer)["errors"]]


def padded(body: bytes, size: int) -> bytes:
    """``body`` (a JSON array) padded with spaces before its closing bracket to ``size`` bytes."""
    assert body.endswith(b"]") and len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + b"]"


def peak_rss_kib(pid: int) -> int:
    """The most resident memory the process has used so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def open_request(server: RunningServer, headers: bytes) -> socket.socket:
    """A raw connection with a POST /events request line and ``headers`` sent."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Read one HTTP/1.1 answer with a Content-Length body: (status, JSON body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the answer"
        body += chunk
    return int(lines[0].split()[1]), json.loads(body)


class TestBodySizeBoundary:
    def test_one_byte_over_with_content_length_is_413(
        self, server: RunningServer, key: str
    ) -> None:
        """A body of limit + 1 bytes, announced by Content-Length, is a 413; nothing stored."""
        before = len(server.stored())
        body = padded(json.dumps([view(key)]).encode(), LIMIT + 1)
        error = request_error(server.post(body), 413)
        assert error["code"] == "body_too_large"
        assert f"limit is {LIMIT} bytes" in error["message"]
        assert len(server.stored()) == before

    def test_one_byte_over_chunked_is_413(self, server: RunningServer, key: str) -> None:
        """The same body streamed without Content-Length (chunked) is a 413 as well."""
        before = len(server.stored())
        body = padded(json.dumps([view(key)]).encode(), LIMIT + 1)

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 256 * 1024):
                yield body[start : start + 256 * 1024]

        answer = post(server.events_url, content=chunks())
        assert request_error(answer, 413)["code"] == "body_too_large"
        assert len(server.stored()) == before

    def test_exactly_the_limit_chunked_is_taken(self, server: RunningServer, key: str) -> None:
        """A chunked body of exactly the limit is read whole and processed."""
        body = padded(json.dumps([view(key)]).encode(), LIMIT)
        halves = iter([body[: LIMIT // 2], body[LIMIT // 2 :]])
        answer = post(server.events_url, content=halves)
        assert answer.status_code == 200
        assert len(answer.json()["processed"]) == 1


class TestRefusedBeforeTheBodyEnds:
    def test_announced_oversize_body_is_refused_before_any_byte_of_it(
        self, server: RunningServer
    ) -> None:
        """Content-Length over the limit: the 413 comes before the client sent a body byte."""
        sock = open_request(server, b"Content-Length: %d\r\n" % (LIMIT + 1))
        try:
            status, body = read_answer(sock)
        finally:
            sock.close()
        assert status == 413 and body["errors"][0]["code"] == "body_too_large"

    def test_chunked_body_is_refused_as_soon_as_it_passes_the_limit(
        self, server: RunningServer
    ) -> None:
        """Chunked: once limit + 1 bytes arrived the 413 is sent; the body was never finished."""
        sock = open_request(server, b"Transfer-Encoding: chunked\r\n")
        try:
            piece = b" " * 65536
            sent = 0
            while sent <= LIMIT:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            # No terminating 0-chunk was sent: the answer cannot have waited for the end.
            status, body = read_answer(sock)
        finally:
            sock.close()
        assert status == 413 and body["errors"][0]["code"] == "body_too_large"
        assert server.get("/healthz").status_code == 200


class TestGzipBombs:
    def test_high_ratio_bomb_is_refused_without_inflating_it(self, server: RunningServer) -> None:
        """256 MiB of zeros in ~250 KiB of gzip (ratio ~1000:1): a 413, and the server's peak
        memory does not grow by anything near the inflated size."""
        packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = b"0" * (1 << 20)
        bomb = b"".join(packer.compress(block) for _ in range(256)) + packer.flush()
        assert len(bomb) * 500 < 256 << 20 and len(bomb) < LIMIT
        assert server.process is not None
        peak_before = peak_rss_kib(server.process.pid)
        answer = server.post(bomb, headers={"content-encoding": "gzip"})
        error = request_error(answer, 413)
        assert error["code"] == "body_too_large" and "after decompression" in error["message"]
        assert peak_rss_kib(server.process.pid) - peak_before < 64 * 1024  # KiB: 64 MiB

    def test_inflated_size_one_byte_over_is_413(self, server: RunningServer, key: str) -> None:
        """A gzip body that inflates to limit + 1 bytes is a 413; to exactly the limit, taken."""
        plain = json.dumps([view(key)]).encode()
        over = zlib.compress(padded(plain, LIMIT + 1), wbits=16 + zlib.MAX_WBITS)
        assert request_error(server.post(over, headers={"content-encoding": "gzip"}), 413)
        exact = zlib.compress(padded(plain, LIMIT), wbits=16 + zlib.MAX_WBITS)
        answer = server.post(exact, headers={"content-encoding": "gzip"})
        assert answer.status_code == 200 and len(answer.json()["processed"]) == 1

    def test_double_gzip_is_inflated_once_and_refused(self, server: RunningServer) -> None:
        """Gzip inside gzip is decoded one level only; the inner bytes are not JSON: 400."""
        inner = zlib.compress(b"[" + b" " * 10_000_000 + b"]", wbits=16 + zlib.MAX_WBITS)
        outer = zlib.compress(inner, wbits=16 + zlib.MAX_WBITS)
        answer = server.post(outer, headers={"content-encoding": "gzip"})
        assert request_error(answer, 400)["code"] == "invalid_json"


DEPTH = 100_000


class TestDeepNesting:
    @pytest.mark.parametrize(
        "body",
        [
            pytest.param("[" + '{"a":' * DEPTH + "1" + "}" * DEPTH + "]", id="objects-in-array"),
            pytest.param('{"a":' * DEPTH + "1" + "}" * DEPTH, id="bare-object"),
            pytest.param(
                '[{"event":"view","price":' + "[" * DEPTH + "]" * DEPTH + "}]", id="in-a-field"
            ),
            pytest.param(
                '[{"event":"view","extra":' + "[" * DEPTH + "]" * DEPTH + "}]",
                id="in-an-unknown-field",
            ),
        ],
    )
    def test_100k_deep_nesting_is_400(self, app: LocalApp, body: str) -> None:
        """100,000 levels of nesting anywhere in the body: 400 invalid_json, no crash."""
        error = request_error(app.post(body), 400)
        assert error["code"] == "invalid_json" and "nested too deeply" in error["message"]
        assert app.get("/healthz").status_code == 200


DIGITS = "9" * 5000


class TestHugeNumbers:
    @pytest.mark.parametrize(
        ("field", "literal"),
        [
            ("price", DIGITS),
            ("price", "-" + DIGITS),
            ("price", "1e400"),
            ("price", DIGITS + ".5e10"),
            ("units", DIGITS),
        ],
    )
    def test_oversize_number_fails_its_field_as_out_of_range(
        self, app: LocalApp, app_key: str, field: str, literal: str
    ) -> None:
        """A 5000-digit (or overflowing) number fails its own field with out_of_range."""
        event = json.dumps(conversion(app_key, **{field: 1}))
        body = "[" + event.replace(f'"{field}": 1', f'"{field}": {literal}') + "]"
        answer = app.post(body)
        assert event_errors(answer) == [(0, field, "out_of_range")]
        assert len(parsed(answer)["errors"][0]["message"]) < 300

    def test_5000_digit_fraction_is_rounded_to_a_float(self, app: LocalApp, app_key: str) -> None:
        """A price with 5000 decimals is a valid float: processed, rounded to double precision."""
        body = json.dumps([conversion(app_key, price=0)]).replace(
            '"price": 0', '"price": 0.' + DIGITS
        )
        [event] = app.post(body).json()["processed"]
        assert event["price"] == 1.0

    def test_5000_digit_number_as_an_event_fails_as_not_an_object(self, app: LocalApp) -> None:
        """A 5000-digit number in the array is an event that is not an object."""
        assert event_errors(app.post(f"[{DIGITS}]")) == [(0, None, "not_an_object")]

    def test_5000_digit_number_as_the_body_is_400(self, app: LocalApp) -> None:
        """A 5000-digit number as the whole body: 400 not_an_array."""
        assert request_error(app.post(DIGITS), 400)["code"] == "not_an_array"


class TestNonFiniteLiterals:
    @pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "nan", "inf"])
    def test_non_json_number_literal_in_an_event_is_400(
        self, app: LocalApp, app_key: str, literal: str
    ) -> None:
        """NaN / Infinity are not JSON: a price written so makes the body invalid_json."""
        body = json.dumps([view(app_key, price=0)]).replace('"price": 0', f'"price": {literal}')
        before = len(app.stored(app_key))
        assert request_error(app.post(body), 400)["code"] == "invalid_json"
        assert len(app.stored(app_key)) == before

    @pytest.mark.parametrize("body", ["[NaN]", "[Infinity]", "[-Infinity]", "Infinity"])
    def test_non_json_number_literal_as_an_element_is_400(self, app: LocalApp, body: str) -> None:
        """NaN / Infinity as an array element or the whole body: 400 invalid_json."""
        assert request_error(app.post(body), 400)["code"] == "invalid_json"


HUGE_FIELDS = [
    ("client_key", "k" * HUGE, "client_key", "too_long"),
    ("product_id", "p" * HUGE, "product_id", "too_long"),
    ("vid", "v" * HUGE, "vid", "too_long"),
    ("permalink", "https://shop.example/" + "p" * HUGE, "permalink", "too_long"),
    ("tags", ["t" * HUGE], "tags", "too_long"),
    ("channels", ["c" * HUGE], "channels", "too_long"),
    ("event", "e" * HUGE, "event", "unknown_event"),
    ("price", "1" * HUGE, "price", "invalid_type"),
]


class TestHugeStrings:
    @pytest.mark.parametrize(
        ("name", "value", "field", "code"), HUGE_FIELDS, ids=[f[0] for f in HUGE_FIELDS]
    )
    def test_huge_string_fails_on_its_field_alone(
        self, app: LocalApp, app_key: str, name: str, value: Any, field: str, code: str
    ) -> None:
        """A 512 KiB string in a field fails that field only, with a short message."""
        answer = app.post([{**view(app_key), name: value}, view(app_key)])
        assert event_errors(answer) == [(0, field, code)]
        assert len(answer.json()["processed"]) == 1
        assert len(answer.json()["errors"][0]["message"]) < 300

    def test_huge_units_string_is_invalid_type(self, app: LocalApp, app_key: str) -> None:
        """A 512 KiB string as a conversion's units is invalid_type on units."""
        assert event_errors(app.post([conversion(app_key, units="9" * HUGE)])) == [
            (0, "units", "invalid_type")
        ]

    def test_huge_unknown_field_is_ignored(self, app: LocalApp, app_key: str) -> None:
        """A 512 KiB value in a field the contract does not define is ignored, not stored."""
        [event] = app.post([view(app_key, comment="x" * HUGE)]).json()["processed"]
        assert "comment" not in event
        assert "comment" not in app.stored(app_key)[-1]

    def test_huge_string_in_every_field_reports_each(self, app: LocalApp) -> None:
        """All fields huge at once: one error per field, all on that one event."""
        event = {name: value for name, value, _, _ in HUGE_FIELDS if name != "event"}
        event["event"] = "view"
        answer = app.post([event])
        assert sorted(event_errors(answer)) == sorted(
            (0, field, code) for name, _, field, code in HUGE_FIELDS if name != "event"
        )


class TestInvalidText:
    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(b'[{"product_id": "\xc0\xaf"}]', id="overlong-encoding"),
            pytest.param(b'[{"product_id": "\xed\xa0\x80"}]', id="utf8-encoded-surrogate"),
            pytest.param(b'[{"product_id": "\xe2\x82"}]', id="truncated-sequence"),
            pytest.param(b'[{"\xff": 1}]', id="in-a-key"),
            pytest.param(b'[{"price": 1}]\xfe', id="after-the-json"),
            pytest.param(b'[{"product_id": "caf\xe9"}]', id="latin-1"),
        ],
    )
    def test_invalid_utf8_is_400_invalid_json(self, app: LocalApp, raw: bytes) -> None:
        """Bytes that are not UTF-8 anywhere in the body: 400 invalid_json naming the byte."""
        error = request_error(app.post(raw), 400)
        assert error["code"] == "invalid_json" and "UTF-8" in error["message"]

    def test_invalid_utf8_inside_gzip_is_400(self, app: LocalApp) -> None:
        """The UTF-8 check applies to the inflated body as well."""
        body = zlib.compress(b'[{"product_id": "\xc0\xaf"}]', wbits=16 + zlib.MAX_WBITS)
        answer = app.post(body, headers={"content-encoding": "gzip"})
        assert request_error(answer, 400)["code"] == "invalid_json"

    def test_non_ascii_text_round_trips(self, app: LocalApp, app_key: str) -> None:
        """Valid multi-byte UTF-8 (Hebrew, emoji, NUL escape) is stored exactly as sent."""
        product = "עגלה 🛒 a\u0000b"
        [event] = app.post([view(app_key, product_id=product)]).json()["processed"]
        assert event["product_id"] == product
        assert app.stored(app_key)[-1]["product_id"] == product

    def test_lone_surrogate_escape_fails_only_its_event(self, app: LocalApp, app_key: str) -> None:
        """A \\ud800 escape is valid JSON syntax but not text: that event fails invalid_text."""
        good = json.dumps(view(app_key))
        bad = json.dumps(view(app_key, product_id="X")).replace('"X"', '"\\ud800"')
        answer = app.post(f"[{bad}, {good}]")
        assert event_errors(answer) == [(0, None, "invalid_text")]
        assert parsed(answer)["failed"] == [json.loads(bad)]
        assert len(answer.json()["processed"]) == 1


class TestDuplicateKeys:
    """JSON leaves repeated keys undefined; here the last value is kept and every occurrence
    must be valid (docs/api.md)."""

    def test_last_occurrence_of_a_valid_duplicate_wins(self, app: LocalApp, app_key: str) -> None:
        """Two valid values for one key: the event is processed with the last one."""
        body = f'[{{"event":"conversion","client_key":"{app_key}","product_id":"first",'
        body += '"price":1,"product_id":"last"}]'
        [event] = app.post(body).json()["processed"]
        assert event["product_id"] == "last"

    def test_last_client_key_decides_the_account(self, app: LocalApp, app_key: str) -> None:
        """An unknown key followed by a real one is stored under the real one, and the
        reverse fails as unknown_client_key: the account checked is the one stored."""
        good = '[{"event":"conversion","price":1,"product_id":"p","client_key":"qlk_nobody",'
        good += f'"client_key":"{app_key}"}}]'
        [event] = app.post(good).json()["processed"]
        assert event["client_key"] == app_key
        bad = f'[{{"event":"conversion","price":1,"product_id":"p","client_key":"{app_key}",'
        bad += '"client_key":"qlk_nobody"}]'
        assert event_errors(app.post(bad)) == [(0, "client_key", "unknown_client_key")]

    def test_invalid_last_occurrence_fails_its_field(self, app: LocalApp, app_key: str) -> None:
        """A valid price followed by a negative one fails as out_of_range on price."""
        body = f'[{{"event":"conversion","client_key":"{app_key}","product_id":"p",'
        body += '"price":5,"price":-1}]'
        assert event_errors(app.post(body)) == [(0, "price", "out_of_range")]

    @pytest.mark.parametrize(
        ("fields", "error"),
        [
            pytest.param('"price":-1,"price":5', ("price", "out_of_range"), id="price"),
            pytest.param('"units":0,"units":2', ("units", "out_of_range"), id="units"),
            pytest.param(
                '"event":"view","event":"conversion"', ("event", "duplicate_field"), id="event"
            ),
        ],
    )
    def test_invalid_earlier_occurrence_fails_its_field(
        self, app: LocalApp, app_key: str, fields: str, error: tuple[str, str]
    ) -> None:
        """Every occurrence must be valid: an invalid earlier one fails its field with its
        code (never the catch-all invalid_value); event repeated differently is
        duplicate_field."""
        body = f'[{{"client_key":"{app_key}","product_id":"p","event":"conversion","price":1,'
        body += fields + "}]"
        assert event_errors(app.post(body)) == [(0, *error)]


def idempotency_rows(server: RunningServer) -> int:
    path = server.data_dir / "events.sqlite3"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM idempotency").fetchone()[0])
    finally:
        conn.close()


class TestIdempotencyKeysWithoutAnAccount:
    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(b"[]", id="empty-batch"),
            pytest.param(json.dumps([{"junk": "x" * HUGE}]).encode(), id="no-client-key"),
            pytest.param(
                json.dumps([view("qlk_nobody", junk="x" * HUGE)]).encode(), id="unknown-key"
            ),
        ],
    )
    def test_request_of_no_known_account_stores_no_record(
        self, server: RunningServer, body: bytes
    ) -> None:
        """A request that names no account of this installation leaves nothing in the store,
        Idempotency-Key or not: unauthenticated callers cannot write to the disk."""
        before = idempotency_rows(server)
        for attempt in range(3):
            answer = server.post(body, headers={"idempotency-key": f"junk-{body[:8]!r}-{attempt}"})
            assert answer.status_code == 200
            assert answer.json()["processed"] == []
        assert idempotency_rows(server) == before
