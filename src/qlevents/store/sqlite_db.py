"""The SQLite database file of the embedded store: its tables, connections and rows.

Shared by the store's front (:mod:`qlevents.store.sqlite`, which reads) and its writer
process (:mod:`qlevents.store.sqlite_writer`, which writes).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import msgspec

from qlevents.events import StoredEvent

#: The events file's migrations (see :mod:`qlevents.sqlite_schema`): version 1 is the schema
#: of release 0.1.0, which recorded no version.
MIGRATIONS: Final = (
    """
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL,
    received_at TEXT    NOT NULL,
    client_key  TEXT    NOT NULL,
    event       TEXT    NOT NULL CHECK (event IN ('view', 'conversion')),
    product_id  TEXT    NOT NULL,
    price       REAL    NOT NULL,
    units       INTEGER,
    vid         TEXT,
    permalink   TEXT,
    tags        TEXT    NOT NULL,  -- JSON array of strings
    channels    TEXT    NOT NULL   -- JSON array of strings
);
CREATE TABLE IF NOT EXISTS idempotency (
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    response    BLOB    NOT NULL,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
""",
)

#: The columns an INSERT fills, in the order of :func:`row_values`.
_INSERT_COLUMNS: Final = (
    "id, received_at, client_key, event, product_id, price, units, vid, permalink, tags, channels"
)
FIELDS: Final = 11
COLUMNS: Final = "position, " + _INSERT_COLUMNS

#: Rows per INSERT statement. Up to EXACT_ROWS rows are one statement of exactly that many;
#: more are cut into statements of the BIG_CHUNKS sizes and a remainder. Every shape is
#: prepared once and then found in the connection's statement cache. A prepared statement
#: costs ~1.2 KB per row of it: all the shapes together hold ~1.5 MB (with exact shapes up
#: to 128 rows and chunks up to 2048 they held 17 MB, which the cache filled over minutes).
EXACT_ROWS: Final = 32
BIG_CHUNKS: Final = (256, 128, 64)
_ROW_PARAMS: Final = "(" + ", ".join(["?"] * FIELDS) + ")"
INSERT_ROWS: Final = {
    rows: f"INSERT INTO events ({_INSERT_COLUMNS}) VALUES " + ", ".join([_ROW_PARAMS] * rows)
    for rows in (*range(1, EXACT_ROWS + 1), *BIG_CHUNKS)
}
#: Room for every INSERT shape and the few other statements.
STATEMENT_CACHE: Final = 256

_encode_labels = msgspec.json.Encoder().encode
_decode_labels = msgspec.json.Decoder(list[str]).decode


def connect(
    path: Path, *, readonly: bool = False, busy_timeout_ms: int = 5000
) -> sqlite3.Connection:
    """A connection with the settings every qlevents connection needs."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=STATEMENT_CACHE
        )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return conn


def statement_sizes(count: int) -> list[int]:
    """How many rows each INSERT statement takes to insert ``count`` rows (few statements)."""
    sizes: list[int] = []
    for rows in (*BIG_CHUNKS, EXACT_ROWS):
        while count >= rows and count > EXACT_ROWS:
            sizes.append(rows)
            count -= rows
    if count:
        sizes.append(count)
    return sizes


def insert_values(events: Iterable[StoredEvent]) -> list[object]:
    """The INSERT parameters of ``events``, flat, row after row."""
    return [value for event in events for value in row_values(event)]


def row_values(event: StoredEvent) -> tuple[object, ...]:
    return (
        event.id,
        event.received_at,
        event.client_key,
        event.event,
        event.product_id,
        event.price,
        event.units,
        event.vid,
        event.permalink,
        _encode_labels(event.tags).decode() if event.tags else "[]",
        _encode_labels(event.channels).decode() if event.channels else "[]",
    )


def row_event(row: tuple[object, ...]) -> StoredEvent:
    """The event of a row selected with :data:`COLUMNS` (the position first)."""
    (_, id_, received_at, client_key, kind, product_id, price, units, vid, permalink) = row[:10]
    return StoredEvent(
        id=str(id_),
        received_at=str(received_at),
        client_key=str(client_key),
        event=str(kind),
        product_id=str(product_id),
        price=float(price),  # type: ignore[arg-type]
        units=None if units is None else int(units),  # type: ignore[call-overload]
        vid=None if vid is None else str(vid),
        permalink=None if permalink is None else str(permalink),
        tags=_decode_labels(str(row[10])),
        channels=_decode_labels(str(row[11])),
    )
