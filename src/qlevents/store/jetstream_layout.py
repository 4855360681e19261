"""The log's layout, version 1: subjects, headers and payloads (docs/cluster.md).

This is the backends' API: a pricing backend reads the events with any NATS client. Every
subject starts with ``<prefix>.v1`` (prefix ``qlevents`` unless configured); a change that
an existing reader could misread gets a new version, and both are written while readers
move.

    <prefix>.v1.events.<account>.<kind>      events of one account and kind (a JSON array)
    <prefix>.v1.idem.<account>.<key-hash>    the record of an Idempotency-Key (kept 24 h)
    <prefix>.v1.idem.<account>.<key-hash>.N  part N of it, when the answer is over one message
    <prefix>.v1.claim.<write>                the claim of a write without a key (2 min)

``<account>`` is the client key and ``<kind>`` the event type (``view``, ``conversion``),
each as a subject token (:func:`token`). A *write* is one atomic batch that stores one
request, or several that arrived together (group commit): its event messages first, one per
(account, kind) (``Qlevents-Part: k/m``), then the record of each request that has a key, or
else one claim of the write's id.

A stored event's position (what :meth:`~qlevents.store.base.EventStore.read` returns) is
``first_sequence << 10 | index``: the stream sequence of the first message of its write, and
its index in the write (at most 1,024 events). Positions increase in write order and never
change.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from qlevents.events import StoredEvent
from qlevents.store.base import IDEMPOTENCY_TTL, IdempotencyRecord

VERSION: Final = "v1"
DEFAULT_PREFIX: Final = "qlevents"
#: A position holds the event's index in its write in its low bits: a write holds at most
#: this many events.
POSITION_BITS: Final = 10
MAX_APPEND_EVENTS: Final = 1 << POSITION_BITS
#: How long a write without a key is remembered (seconds): longer than the store retries
#: it (~10 s) plus the server's atomic-batch timeout (10 s).
CLAIM_TTL: Final = 120

# Headers of version 1.
WRITE: Final = "Qlevents-Write"  # the write the message belongs to (32 hex digits)
PART: Final = "Qlevents-Part"  # "k/m": event message k (from 0) of the write's m
INDEX: Final = "Qlevents-Index"  # each event's index in its write: "0-3,7"
FINGERPRINT: Final = "Qlevents-Fingerprint"  # the request body's digest (hex), on records
PARTS: Final = "Qlevents-Parts"  # how many messages the record's answer spans
# NATS's own.
EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
TTL: Final = "Nats-TTL"

_SAFE_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+")
_ENCODER: Final = msgspec.json.Encoder()
_EVENTS: Final = msgspec.json.Decoder(list[StoredEvent])


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can start the subjects (letters, digits, ``_`` and ``-``)."""
    if not _SAFE_TOKEN.fullmatch(prefix):
        raise ValueError(f"the subject prefix {prefix!r} may hold only letters, digits, _ and -")
    return prefix


def stream_name(prefix: str) -> str:
    """The name of the stream that holds ``<prefix>.v1.>``."""
    return check_prefix(prefix).upper()


def token(value: str) -> str:
    """``value`` as one subject token: itself if it is letters, digits, ``_`` and ``-`` (a
    client key always is), else ``~`` and its UTF-8 in unpadded base64url."""
    if _SAFE_TOKEN.fullmatch(value):
        return value
    return "~" + base64.urlsafe_b64encode(value.encode()).rstrip(b"=").decode("ascii")


def untoken(value: str) -> str:
    """The string :func:`token` made ``value`` from."""
    if not value.startswith("~"):
        return value
    encoded = value[1:]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def all_subjects(prefix: str) -> str:
    return f"{prefix}.{VERSION}.>"


def events_subject(prefix: str, account: str | None = None, kind: str | None = None) -> str:
    """The subject of ``account``'s events of ``kind``; a wildcard for each one not given
    (``events_subject("qlevents")`` is every event)."""
    if account is None and kind is None:
        return f"{prefix}.{VERSION}.events.>"
    account_part = "*" if account is None else token(account)
    kind_part = "*" if kind is None else token(kind)
    return f"{prefix}.{VERSION}.events.{account_part}.{kind_part}"


def record_subject(prefix: str, scope: str, key: str) -> str:
    """Where the record of ``key`` of account ``scope`` is (the key is hashed: any string)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{prefix}.{VERSION}.idem.{token(scope)}.{digest}"


def claim_subject(prefix: str, write_id: str) -> str:
    return f"{prefix}.{VERSION}.claim.{write_id}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish as part of a write's batch."""

    subject: str
    payload: bytes
    headers: dict[str, str]


Runs = list[tuple[int, int]]
"""Increasing indexes as runs of consecutive ones, each (first, last)."""


@dataclass(frozen=True, slots=True)
class EventChunk:
    """Some of one request's events of one account and kind, encoded (a JSON array)."""

    subject: str
    payload: bytes
    runs: Runs
    """Each event's index in its request, as runs."""


def event_chunks(prefix: str, events: Sequence[StoredEvent], max_payload: int) -> list[EventChunk]:
    """A request's events, a chunk per (account, kind) in the order each first appears,
    split where one would hold more than ``max_payload`` bytes."""
    keys = [(event.client_key, event.event) for event in events]
    if keys and keys.count(keys[0]) == len(keys):  # the usual request: one account, one kind
        groups = {keys[0]: list(range(len(keys)))}
    else:
        groups = {}
        for index, key in enumerate(keys):
            groups.setdefault(key, []).append(index)
    chunks: list[EventChunk] = []
    for (account, kind), indexes in groups.items():
        subject = events_subject(prefix, account, kind)
        taken = events if len(indexes) == len(events) else [events[i] for i in indexes]
        payload = _ENCODER.encode(taken)
        if len(payload) <= max_payload:
            chunks.append(EventChunk(subject, payload, index_runs(indexes)))
        else:
            chunks.extend(_split(subject, events, indexes, max_payload))
    return chunks


def write_messages(
    prefix: str,
    requests: Sequence[tuple[int, Sequence[EventChunk]]],
    write_id: str,
    max_payload: int,
) -> list[Outgoing]:
    """The event messages of one write: its requests' chunks (each request given with its
    number of events), merged into one message per (account, kind) in the order each first
    appears, split where one would hold more than ``max_payload`` bytes. Indexes count
    through the write: request 0's events first, then request 1's, and so on."""
    merged: dict[str, list[tuple[bytes, Runs]]] = {}
    base = 0
    for count, chunks in requests:
        for chunk in chunks:
            shifted = chunk.runs if base == 0 else [(a + base, b + base) for a, b in chunk.runs]
            merged.setdefault(chunk.subject, []).append((chunk.payload, shifted))
        base += count
    messages: list[tuple[str, bytes, Runs]] = []
    for subject, pieces in merged.items():
        if len(pieces) == 1:
            messages.append((subject, *pieces[0]))
            continue
        inner: list[bytes] = []
        runs: Runs = []
        size = 2  # the brackets
        for payload, taken in pieces:
            if inner and size + len(payload) - 1 > max_payload:
                messages.append((subject, b"[" + b",".join(inner) + b"]", runs))
                inner, runs, size = [], [], 2
            inner.append(payload[1:-1])
            if runs and runs[-1][1] + 1 == taken[0][0]:  # consecutive: one run
                runs[-1] = (runs[-1][0], taken[0][1])
                runs.extend(taken[1:])
            else:
                runs.extend(taken)
            size += len(payload) - 1  # less its brackets, plus a comma
        messages.append((subject, b"[" + b",".join(inner) + b"]", runs))
    total = len(messages)
    return [
        Outgoing(
            subject,
            payload,
            {WRITE: write_id, PART: f"{part}/{total}", INDEX: format_runs(runs)},
        )
        for part, (subject, payload, runs) in enumerate(messages)
    ]


def event_messages(
    prefix: str, events: Sequence[StoredEvent], write_id: str, max_payload: int
) -> list[Outgoing]:
    """The event messages of a write of one request (:func:`write_messages`)."""
    chunks = event_chunks(prefix, events, max_payload)
    return write_messages(prefix, [(len(events), chunks)], write_id, max_payload)


def _split(
    subject: str, events: Sequence[StoredEvent], indexes: list[int], max_payload: int
) -> list[EventChunk]:
    chunks: list[EventChunk] = []
    encoded: list[bytes] = []
    taken: list[int] = []
    size = 2  # the brackets
    for index in indexes:
        one = _ENCODER.encode(events[index])
        if len(one) + 3 > max_payload:
            raise ValueError(f"event {index} alone is over {max_payload} bytes")
        if encoded and size + len(one) + 1 > max_payload:
            chunks.append(EventChunk(subject, b"[" + b",".join(encoded) + b"]", index_runs(taken)))
            encoded, taken, size = [], [], 2
        encoded.append(one)
        taken.append(index)
        size += len(one) + 1
    chunks.append(EventChunk(subject, b"[" + b",".join(encoded) + b"]", index_runs(taken)))
    return chunks


def record_messages(
    prefix: str, record: IdempotencyRecord, write_id: str, max_payload: int
) -> list[Outgoing]:
    """The record of ``record``'s key: its first message claims the key (it is stored only
    if the subject holds no message); the answer goes over as many as it needs."""
    subject = record_subject(prefix, record.scope, record.key)
    response = record.response
    pieces = [response[i : i + max_payload] for i in range(0, len(response), max_payload)]
    pieces = pieces or [b""]
    ttl = str(int(IDEMPOTENCY_TTL))
    first = Outgoing(
        subject,
        pieces[0],
        {
            WRITE: write_id,
            FINGERPRINT: record.fingerprint.hex(),
            PARTS: str(len(pieces)),
            EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
            TTL: ttl,
        },
    )
    rest = [
        Outgoing(f"{subject}.{n}", piece, {WRITE: write_id, TTL: ttl})
        for n, piece in enumerate(pieces[1:], start=1)
    ]
    return [first, *rest]


def claim_message(prefix: str, write_id: str) -> Outgoing:
    """The claim that makes a write without a key unique: a retry of it is refused."""
    return Outgoing(
        claim_subject(prefix, write_id),
        b"",
        {WRITE: write_id, EXPECTED_LAST_SUBJECT_SEQUENCE: "0", TTL: str(CLAIM_TTL)},
    )


def index_runs(indexes: Sequence[int]) -> Runs:
    """Increasing indexes as runs: [0, 1, 2, 3, 7] -> [(0, 3), (7, 7)]."""
    runs: Runs = []
    start = previous = indexes[0]
    for index in indexes[1:]:
        if index != previous + 1:
            runs.append((start, previous))
            start = index
        previous = index
    runs.append((start, previous))
    return runs


def format_runs(runs: Runs) -> str:
    """Runs as the ``Qlevents-Index`` header writes them: [(0, 3), (7, 7)] -> "0-3,7"."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def format_indexes(indexes: Sequence[int]) -> str:
    """Increasing indexes as ranges: [0, 1, 2, 3, 7] -> "0-3,7"."""
    return format_runs(index_runs(indexes))


def parse_indexes(text: str) -> list[int]:
    indexes: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        indexes.extend(range(int(first), int(last or first) + 1))
    return indexes


@dataclass(frozen=True, slots=True)
class EventMessage:
    """One message of ``<prefix>.v1.events.>``, decoded."""

    subject: str
    sequence: int
    """Its stream sequence."""
    account: str
    kind: str
    write_id: str
    part: int
    """Which of its write's event messages it is (from 0), of ``parts``."""
    parts: int
    indexes: list[int]
    """Each event's index in its write."""
    events: list[StoredEvent]

    @property
    def first_sequence(self) -> int:
        """The stream sequence of its write's first message."""
        return self.sequence - self.part

    @property
    def positions(self) -> list[int]:
        """Each event's position (as the store's ``read`` gives it)."""
        base = self.first_sequence << POSITION_BITS
        return [base | index for index in self.indexes]


def decode_event_message(
    subject: str, sequence: int, headers: Mapping[str, str], payload: bytes
) -> EventMessage:
    """An event message from what any NATS client gives: its subject, stream sequence,
    headers and payload."""
    tokens = subject.split(".")
    part, _, parts = headers[PART].partition("/")
    events = _EVENTS.decode(payload)
    indexes = parse_indexes(headers[INDEX])
    if len(indexes) != len(events):
        raise ValueError(f"message {sequence}: {len(events)} events but {len(indexes)} indexes")
    return EventMessage(
        subject=subject,
        sequence=sequence,
        account=untoken(tokens[-2]),
        kind=untoken(tokens[-1]),
        write_id=headers[WRITE],
        part=int(part),
        parts=int(parts),
        indexes=indexes,
        events=events,
    )
