"""POST /events: read the body, validate every event, store the good ones, answer.

The answer is always the spec's ``{"processed", "failed", "errors"}``. "processed" means
durable: the answer is written only after the store acknowledged the commit.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from time import time
from typing import TYPE_CHECKING, Final

import msgspec

from qlevents._exceptions import StoreUnavailableError
from qlevents.accounts import DISABLED, Account, key_problem
from qlevents.events import (
    ConversionEvent,
    ErrorEntry,
    Event,
    EventsResponse,
    StoredEvent,
    ViewEvent,
    are_permalinks,
)
from qlevents.server.directory import AccountDirectory
from qlevents.server.ids import new_event_ids, utc_now_iso
from qlevents.server.metrics import Metrics
from qlevents.server.ratelimit import RateLimiter
from qlevents.server.responses import encode, send_body, send_request_error
from qlevents.server.types import Receive, Scope, Send
from qlevents.store.base import EventStore, IdempotencyRecord, Replay
from qlevents.validation import decode_event

if TYPE_CHECKING:
    from qlevents.server.activity import ActivityRecorder

_split_array: Final = msgspec.json.Decoder(list[msgspec.Raw]).decode
_check_json: Final = msgspec.json.Decoder(msgspec.Raw).decode
#: The whole body as events, in one typed decode: the fast path for all-valid batches.
_decode_batch: Final = msgspec.json.Decoder(list[Event]).decode
MAX_IDEMPOTENCY_KEY: Final = 255
_EVENT_TYPES: Final = (ViewEvent, ConversionEvent)


class _KeyOnly(msgspec.Struct):
    """Reads just the client key of an event that failed validation, ignoring the rest."""

    client_key: object = None


_read_key: Final = msgspec.json.Decoder(_KeyOnly).decode


def _client_key_of(raw: msgspec.Raw) -> str | None:
    try:
        key = _read_key(raw).client_key
    except msgspec.DecodeError:  # not an object, or text that is not Unicode
        return None
    return key if isinstance(key, str) else None


class RequestRejected(Exception):
    """The request as a whole cannot be taken; carries the status and the error entry."""

    def __init__(
        self, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class ClientDisconnected(Exception):
    """The client went away before sending its whole body."""


@dataclass(slots=True)
class Outcome:
    """What happened to one request, for the access log and the metrics."""

    status: int = 200
    processed: int = 0
    failed: int = 0
    replayed: bool = False


class Ingest:
    #: The dashboard's activity ledger, told every answered request (set by the app).
    recorder: ActivityRecorder | None = None

    def __init__(
        self,
        store: EventStore,
        accounts: AccountDirectory,
        metrics: Metrics,
        limiter: RateLimiter,
        *,
        max_body_bytes: int,
        max_events: int,
        max_inflight_requests: int,
        max_inflight_bytes: int,
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.metrics = metrics
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.max_events = max_events
        self.max_inflight_requests = max_inflight_requests
        self.max_inflight_bytes = max_inflight_bytes
        self.inflight_requests = 0
        self.inflight_bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Outcome:
        try:
            if self.inflight_requests >= self.max_inflight_requests:
                raise _overloaded(f"{self.inflight_requests} requests are in progress")
            self.inflight_requests += 1
            held = [0]  # bytes this request holds against max_inflight_bytes
            try:
                return await self._handle(scope, receive, send, held)
            finally:
                self.inflight_requests -= 1
                self.inflight_bytes -= held[0]
        except RequestRejected as rejected:
            await send_request_error(
                send, rejected.status, rejected.code, rejected.message, rejected.headers
            )
            return Outcome(status=rejected.status)

    def _hold(self, held: list[int], size: int) -> None:
        """Count ``size`` more bytes against the in-flight limit, or refuse with 503."""
        # A request alone is always let in, however large (the body limit bounds it).
        others = self.inflight_bytes - held[0]
        if others > 0 and self.inflight_bytes + size > self.max_inflight_bytes:
            raise _overloaded(f"{self.inflight_bytes} bytes of requests are in progress")
        self.inflight_bytes += size
        held[0] += size

    async def _handle(self, scope: Scope, receive: Receive, send: Send, held: list[int]) -> Outcome:
        encoding = length = idempotency_key = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-encoding":
                encoding = value.strip().lower()
            elif name == b"idempotency-key":
                idempotency_key = value
        gzipped = self._check_encoding(encoding)
        if length is not None and length.isdigit():
            if int(length) > self.max_body_bytes:
                raise self._too_large(int(length), compressed=gzipped)
            self._hold(held, int(length))
        body = await self._read_body(receive)
        if length is None:
            self._hold(held, len(body))
        if gzipped:
            body = self._gunzip(body)
            self._hold(held, len(body))
        key = self._check_idempotency_key(idempotency_key)
        _check_text(body)
        accounts = self.accounts.snapshot
        received_at = utc_now_iso()
        received = time()
        response = self._take_valid_batch(body, accounts, received_at)
        if response is None:  # something is wrong with an event: find out what, event by event
            response = self._take_events(self._split(body), accounts, received_at)
        accepted = response.processed

        # A key is remembered only for a request of a known account: otherwise anyone could
        # make the store keep answers (which echo up to 5 MiB of failed events) for 24 h.
        scope_key = self._first_client_key(response) if key is not None else None
        if scope_key is None or scope_key not in accounts:
            key = scope_key = None
        fingerprint = hashlib.blake2b(body, digest_size=16).digest() if key is not None else b""

        spent: dict[str, int] = {}  # rate-limit tokens taken, per account
        if accepted and self.limiter.active:
            try:
                spent = self._check_rate(accepted, accounts)
            except RequestRejected:
                # A retry of a request that was stored is answered as such, quota or not.
                if key is None or scope_key is None:
                    raise
                earlier = await self.store.find_replay(scope_key, key)
                if earlier is None:
                    raise
                answer = self._replayed(key, earlier, fingerprint)
                await send_body(send, 200, answer, [(b"idempotent-replayed", b"true")])
                return Outcome(replayed=True)
        answer = encode(response)
        outcome = Outcome(processed=len(accepted), failed=len(response.failed))
        headers: list[tuple[bytes, bytes]] = []
        if accepted or key is not None:
            record = None
            if key is not None:
                assert scope_key is not None
                record = IdempotencyRecord(
                    scope=scope_key, key=key, fingerprint=fingerprint, response=answer
                )
            try:
                replay = await self.store.append(accepted, record)
            except StoreUnavailableError as exc:
                self.limiter.give_back(spent)  # nothing was stored
                retry = str(max(1, round(exc.retry_after))).encode()
                raise RequestRejected(
                    503,
                    "store_unavailable",
                    f"the events could not be stored, none of them was: {exc}; retry later.",
                    [(b"retry-after", retry)],
                ) from exc
            if replay is not None:
                assert key is not None
                self.limiter.give_back(spent)  # a retry stores nothing again
                answer = self._replayed(key, replay, fingerprint)
                headers.append((b"idempotent-replayed", b"true"))
                outcome = Outcome(replayed=True)
        self.metrics.events_processed.inc(outcome.processed)
        if response.errors and not outcome.replayed:
            self._count_failed(response.errors)
        if self.recorder is not None and not outcome.replayed:
            self.recorder.record(accepted, response.failed, response.errors, received, time())
        await send_body(send, 200, answer, headers)
        return outcome

    @staticmethod
    def _replayed(key: str, replay: Replay, fingerprint: bytes) -> bytes:
        """The first answer, for a retry with the same body; 422 for another body."""
        if replay.fingerprint != fingerprint:
            raise RequestRejected(
                422,
                "idempotency_key_reused",
                f"the Idempotency-Key {key!r} was already used for a different request"
                " body in the last 24 hours; use a new key for a new request.",
            )
        return replay.response

    def _count_failed(self, errors: list[ErrorEntry]) -> None:
        """One count per failed event, under the code of its first problem (counted only
        once the request is answered: not for a 429, a 503 or a replayed retry)."""
        counted = None
        for error in errors:  # in request order, an event's problems together
            if error.index is not None and error.index != counted:
                counted = error.index
                self.metrics.events_failed.labels(error.code).inc()

    # --- the steps -----------------------------------------------------------------------

    def _take_valid_batch(
        self, body: bytes, accounts: Mapping[str, Account], received_at: str
    ) -> EventsResponse | None:
        """The answer for a batch whose every event is valid and homed here, found with one
        typed decode of the whole array; None for anything else (then ``_take_events``)."""
        if body[:1] != b"[":
            return None
        try:
            events = _decode_batch(body)
        except (msgspec.DecodeError, RecursionError):
            return None
        if len(events) > self.max_events:
            return None
        local = self.accounts.local_endpoint
        ids = new_event_ids(len(events))
        accepted: list[StoredEvent] = []
        permalinks: list[str] = []
        for index, event in enumerate(events):
            if self._check_account(index, event.client_key, accounts, local) is not None:
                return None
            if type(event) is ViewEvent:
                permalinks.append(event.permalink)
            accepted.append(_stored(event, ids[index], received_at))
        if not are_permalinks(permalinks):
            return None
        return EventsResponse(processed=accepted, failed=[], errors=[])

    def _take_events(
        self, raws: list[msgspec.Raw], accounts: Mapping[str, Account], received_at: str
    ) -> EventsResponse:
        """Validate event by event: every problem of every event, the good ones stored."""
        ids = new_event_ids(len(raws))
        response = EventsResponse(processed=[], failed=[], errors=[])
        accepted = response.processed
        local = self.accounts.local_endpoint
        for index, raw in enumerate(raws):
            result = decode_event(raw)
            if isinstance(result, _EVENT_TYPES):
                error = self._check_account(index, result.client_key, accounts, local)
                if error is None:
                    accepted.append(_stored(result, ids[index], received_at))
                    continue
                errors = [error]
            else:
                errors = [ErrorEntry(index, p.field, p.code, p.message) for p in result]
                if not any(p.field == "client_key" for p in result):
                    client_key = _client_key_of(raw)
                    if client_key is not None:
                        error = self._check_account(index, client_key, accounts, local)
                        if error is not None:
                            errors.append(error)
            response.failed.append(raw)
            response.errors.extend(errors)
        return response

    @staticmethod
    def _first_client_key(response: EventsResponse) -> str | None:
        """The client key of the request's first event (the scope of its Idempotency-Key)."""
        if response.errors and response.errors[0].index == 0:
            return _client_key_of(response.failed[0])
        if response.processed:
            return response.processed[0].client_key
        return None

    def _check_rate(
        self, accepted: list[StoredEvent], accounts: Mapping[str, Account]
    ) -> dict[str, int]:
        """Take the accounts' tokens for ``accepted`` (returned, per account) or refuse: 429."""
        counts: dict[str, int] = {}
        for event in accepted:
            counts[event.client_key] = counts.get(event.client_key, 0) + 1
        wait = self.limiter.admit(counts, accounts)
        if wait > 0:
            retry = self.limiter.retry_after(wait)
            raise RequestRejected(
                429,
                "rate_limited",
                f"the account is over its rate limit; none of the {len(accepted)} events was"
                f" stored. Retry in {retry} s.",
                [(b"retry-after", str(retry).encode())],
            )
        return counts

    def _check_encoding(self, encoding: bytes | None) -> bool:
        if encoding is None or encoding in (b"", b"identity"):
            return False
        if encoding in (b"gzip", b"x-gzip"):
            return True
        raise RequestRejected(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding.decode('latin-1')!r} is not supported;"
            " send the body plain or with Content-Encoding: gzip.",
        )

    def _too_large(self, size: int, *, compressed: bool = False) -> RequestRejected:
        what = "compressed body" if compressed else "body"
        return RequestRejected(
            413,
            "body_too_large",
            f"the request {what} has {size} bytes or more; the limit is {self.max_body_bytes}"
            " bytes (after decompression). Split the events over several requests.",
        )

    async def _read_body(self, receive: Receive) -> bytes:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > self.max_body_bytes:
                raise self._too_large(len(body))
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large(size)
            chunks.append(chunk)
        return b"".join(chunks)

    def _gunzip(self, body: bytes) -> bytes:
        # Inflate at most one byte past the limit: a gzip bomb is refused, never expanded.
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            plain = inflater.decompress(body, self.max_body_bytes + 1)
        except zlib.error as exc:
            raise RequestRejected(
                400, "invalid_gzip", f"the body is not valid gzip data: {exc}."
            ) from exc
        if len(plain) > self.max_body_bytes:
            raise self._too_large(len(plain))
        if not inflater.eof or inflater.unused_data:
            raise RequestRejected(
                400,
                "invalid_gzip",
                "the gzip body is truncated or holds more than one member; send one gzip member.",
            )
        return plain

    def _check_idempotency_key(self, raw: bytes | None) -> str | None:
        if raw is None:
            return None
        key = raw.decode("latin-1").strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
            raise RequestRejected(
                400,
                "invalid_idempotency_key",
                f"the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII"
                " characters.",
            )
        return key

    def _split_after_error(self, body: bytes, exc: msgspec.DecodeError) -> list[msgspec.Raw]:
        # Text msgspec refuses inside valid JSON syntax (a lone surrogate escape): split with
        # the stdlib so that only that event fails. Only then: the stdlib parser is ~10x slower.
        if "escape" in str(exc) or "surrogate" in str(exc):
            try:
                return self._split_lenient(body)
            except (ValueError, RecursionError):
                pass
        detail = str(exc) if body.strip() else "the body is empty"
        raise RequestRejected(
            400, "invalid_json", f"the body is not valid JSON: {detail}."
        ) from exc

    @staticmethod
    def _split_lenient(body: bytes) -> list[msgspec.Raw]:
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

    def _split(self, body: bytes) -> list[msgspec.Raw]:
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
            raws = self._split_after_error(body, exc)
        except RecursionError as exc:
            raise RequestRejected(
                400, "invalid_json", "the body is nested too deeply to be an array of events."
            ) from exc
        if len(raws) > self.max_events:
            raise RequestRejected(
                413,
                "too_many_events",
                f"the request holds {len(raws)} events; the limit is {self.max_events} per request."
                " Split the events over several requests.",
            )
        return raws

    def _check_account(
        self, index: int, client_key: str, accounts: Mapping[str, Account], local: str
    ) -> ErrorEntry | None:
        account = accounts.get(client_key)
        if account is None:
            if client_key in self.accounts.previous:  # a replaced key past its grace period
                expired = key_problem(client_key, accounts, self.accounts.previous, local, time())
                if expired is not None:
                    return ErrorEntry(index, "client_key", expired.code, expired.message)
            return ErrorEntry(
                index,
                "client_key",
                "unknown_client_key",
                "client_key is not the key of any account on this endpoint; copy it from"
                " Settings > Integration Settings.",
            )
        if account.status == DISABLED:
            return ErrorEntry(
                index,
                "client_key",
                "disabled_client_key",
                f"client_key belongs to the disabled account {account.name!r}.",
            )
        if account.endpoint is not None and account.endpoint != local:
            return ErrorEntry(
                index,
                "client_key",
                "wrong_endpoint",
                f"the account of this client_key is homed on {account.endpoint}, not on {local};"
                " send its events there.",
                endpoint=account.endpoint,
            )
        return None


def _check_text(body: bytes) -> None:
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


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _overloaded(reason: str) -> RequestRejected:
    return RequestRejected(
        503,
        "overloaded",
        f"the server is at capacity ({reason}); nothing was stored, retry shortly.",
        [(b"retry-after", b"1")],
    )


def _json_kind(start: bytes) -> str:
    if start == b'"':
        return "a string"
    if start in (b"t", b"f"):
        return "a boolean"
    if start == b"n":
        return "null"
    return "a number"


def _stored(event: ViewEvent | ConversionEvent, event_id: str, received_at: str) -> StoredEvent:
    if isinstance(event, ViewEvent):
        return StoredEvent(
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
    return StoredEvent(
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
