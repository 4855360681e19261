"""POST /events, as the story of one request: read the body, accept its events, remember the
Idempotency-Key, take the rate limit's tokens, store, answer.

The answer is always the spec's ``{"processed", "failed", "errors"}``. "processed" means
durable: the answer is written only after the store acknowledged the commit. The steps
have modules of their own: body.py (reading), splitting.py (JSON into events), accept.py
(validation and accounts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from time import time
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs

from qlevents._exceptions import StoreOutcomeUnknownError, StoreUnavailableError
from qlevents.accounts import Account
from qlevents.events import ErrorEntry, EventsResponse, StoredEvent
from qlevents.server.accept import accept_each, accept_valid_batch, client_key_of
from qlevents.server.body import BodyReader
from qlevents.server.directory import AccountDirectory
from qlevents.server.ids import utc_now_iso
from qlevents.server.metrics import Metrics
from qlevents.server.ratelimit import RateLimiter
from qlevents.server.responses import RequestRejected, encode, send_body, send_request_error
from qlevents.server.splitting import check_utf8, split_events
from qlevents.server.types import Receive, Scope, Send
from qlevents.store.base import EventStore, IdempotencyRecord, Replay

if TYPE_CHECKING:
    from qlevents.server.activity import ActivityRecorder

MAX_IDEMPOTENCY_KEY: Final = 255


@dataclass(slots=True)
class Outcome:
    """What happened to one request, for the access log and the metrics."""

    status: int = 200
    processed: int = 0
    failed: int = 0
    replayed: bool = False


class Ingest:
    #: Told every answered request (the dashboard's activity ledger), when one is attached.
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
        self.max_events = max_events
        self.bodies = BodyReader(
            max_body_bytes=max_body_bytes,
            max_inflight_requests=max_inflight_requests,
            max_inflight_bytes=max_inflight_bytes,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Outcome:
        try:
            held = self.bodies.admit()
            try:
                return await self._handle(scope, receive, send, held)
            finally:
                self.bodies.release(held)
        except RequestRejected as rejected:
            await send_request_error(
                send, rejected.status, rejected.code, rejected.message, rejected.headers
            )
            return Outcome(status=rejected.status)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, held: list[int]) -> Outcome:
        encoding = length = idempotency_key = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-encoding":
                encoding = value.strip().lower()
            elif name == b"idempotency-key":
                idempotency_key = value
        body = await self.bodies.read(receive, length, encoding, held)
        key = _check_idempotency_key(idempotency_key)
        received = time()
        accounts = self.accounts.snapshot
        response = self.accept(body)
        if scope["query_string"] and _dry_run(scope["query_string"]):
            # The same answer, from the same steps; nothing stored, counted or rate-limited.
            await send_body(send, 200, encode(response), [(b"dry-run", b"true")])
            return Outcome()
        accepted = response.processed

        # A key is remembered only for a request of a known account: otherwise anyone could
        # make the store keep answers (which echo up to 5 MiB of failed events) for 24 h.
        scope_key = _first_client_key(response) if key is not None else None
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
                answer = _replayed(key, earlier, fingerprint)
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
                self.limiter.give_back(spent)  # nothing was stored, or nothing can be told
                raise _store_unavailable(exc) from exc
            if replay is not None:
                assert key is not None
                self.limiter.give_back(spent)  # a retry stores nothing again
                answer = _replayed(key, replay, fingerprint)
                headers.append((b"idempotent-replayed", b"true"))
                outcome = Outcome(replayed=True)
        self.metrics.events_processed.inc(outcome.processed)
        if response.errors and not outcome.replayed:
            self._count_failed(response.errors)
        if self.recorder is not None and not outcome.replayed:
            self.recorder.record(accepted, response.failed, response.errors, received, time())
        await send_body(send, 200, answer, headers)
        return outcome

    def accept(self, body: bytes) -> EventsResponse:
        """The answer's events for ``body``: the valid ones of accounts homed here accepted,
        every other failed with all its problems. Nothing is stored."""
        check_utf8(body)
        received_at = utc_now_iso()
        response = accept_valid_batch(body, self.accounts, received_at, self.max_events)
        if response is None:  # something is wrong with an event: find out what, event by event
            response = accept_each(split_events(body, self.max_events), self.accounts, received_at)
        return response

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

    def _count_failed(self, errors: list[ErrorEntry]) -> None:
        """One count per failed event, under the code of its first problem (counted only
        once the request is answered: not for a 429, a 503 or a replayed retry)."""
        counted = None
        for error in errors:  # in request order, an event's problems together
            if error.index is not None and error.index != counted:
                counted = error.index
                self.metrics.events_failed.labels(error.code).inc()


def _check_idempotency_key(raw: bytes | None) -> str | None:
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


def _first_client_key(response: EventsResponse) -> str | None:
    """The client key of the request's first event (the scope of its Idempotency-Key)."""
    if response.errors and response.errors[0].index == 0:
        return client_key_of(response.failed[0])
    if response.processed:
        return response.processed[0].client_key
    return None


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


def _store_unavailable(exc: StoreUnavailableError) -> RequestRejected:
    """The 503 for a store that did not take the events, or cannot tell whether it did."""
    if isinstance(exc, StoreOutcomeUnknownError):
        message = (
            f"the store did not confirm the events in time ({exc}): they may or may not be"
            " stored. Retry with the same Idempotency-Key: a stored request is then answered"
            " as it was, and nothing is stored twice."
        )
    else:
        message = f"the events could not be stored, none of them was: {exc}; retry later."
    retry = str(max(1, round(exc.retry_after))).encode()
    return RequestRejected(503, "store_unavailable", message, [(b"retry-after", retry)])


def _dry_run(query: bytes) -> bool:
    """Whether the query string asks for a dry run (``dry_run=true``); 400 for a bad value."""
    values = parse_qs(query.decode("latin-1")).get("dry_run")
    if not values:
        return False
    if values[-1].lower() in ("true", "1"):
        return True
    if values[-1].lower() in ("false", "0"):
        return False
    raise RequestRejected(
        400, "invalid_query", f"dry_run must be true or false; got {values[-1]!r}."
    )
