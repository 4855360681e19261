"""The peer: POST /events written the way a typical team would, with FastAPI + pydantic v2.

Same event types and rules as ``qlevents.events`` (a discriminated union on "event"),
validated event by event so valid events are stored and invalid ones reported, in the
same ``{"processed", "failed", "errors"}`` answer. SQLite in WAL mode with synchronous=FULL,
one transaction (one fsync) per request. Unlike qlevents it accepts any client_key: there
are no accounts.

    PEER_DB=/tmp/peer.sqlite3 uvicorn bench.peer_fastapi:app --loop uvloop --http httptools
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

URL_PATTERN = r"(?i)^https?://[^\s/?#@]+(?:[/?#]\S*)?$"

Label = Annotated[str, Field(max_length=128)]


class _Base(BaseModel):
    # strict: "12.5" is not a price and 3.0 is not a count, as in qlevents (msgspec).
    model_config = ConfigDict(strict=True, extra="ignore")

    client_key: Annotated[str, Field(min_length=1, max_length=128)]
    price: Annotated[float, Field(ge=0, le=1e12)]
    product_id: Annotated[str, Field(min_length=1, max_length=256)]
    vid: Annotated[str, Field(max_length=256)] | None = None
    tags: Annotated[list[Label], Field(max_length=64)] = []


class ViewEvent(_Base):
    event: Literal["view"]
    permalink: Annotated[str, Field(max_length=2048, pattern=URL_PATTERN)]
    channels: Annotated[list[Label], Field(max_length=16)] = []


class ConversionEvent(_Base):
    event: Literal["conversion"]
    channels: Annotated[list[Label], Field(max_length=1)] = []
    units: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


Event = Annotated[ViewEvent | ConversionEvent, Field(discriminator="event")]
event_adapter: TypeAdapter[ViewEvent | ConversionEvent] = TypeAdapter(Event)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY,
    id          TEXT NOT NULL,
    received_at TEXT NOT NULL,
    client_key  TEXT NOT NULL,
    event       TEXT NOT NULL,
    product_id  TEXT NOT NULL,
    price       REAL NOT NULL,
    units       INTEGER,
    vid         TEXT,
    permalink   TEXT,
    tags        TEXT NOT NULL,
    channels    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_client ON events (client_key, position);
"""
INSERT = (
    "INSERT INTO events (id, received_at, client_key, event, product_id, price, units, vid,"
    " permalink, tags, channels) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

db = sqlite3.connect(os.environ.get("PEER_DB", "peer-events.sqlite3"), check_same_thread=False)
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA synchronous = FULL")
db.executescript(SCHEMA)
db_lock = threading.Lock()

app = FastAPI()


@app.post("/events")
def ingest(events: Annotated[list[Any], Body()]) -> dict[str, list[Any]]:
    received_at = datetime.now(UTC).isoformat()
    processed: list[dict[str, Any]] = []
    failed: list[Any] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(events):
        try:
            event = event_adapter.validate_python(item)
        except ValidationError as exc:
            failed.append(item)
            for error in exc.errors():
                field = ".".join(str(part) for part in error["loc"][1:]) or None
                errors.append(
                    {"index": index, "field": field, "code": error["type"], "message": error["msg"]}
                )
            continue
        stored = {"id": str(uuid.uuid4()), "received_at": received_at, **event.model_dump()}
        processed.append(stored)
    if processed:
        rows = [
            (
                e["id"], e["received_at"], e["client_key"], e["event"], e["product_id"],
                e["price"], e.get("units"), e["vid"], e.get("permalink"),
                json.dumps(e["tags"]), json.dumps(e["channels"]),
            )
            for e in processed
        ]  # fmt: skip
        with db_lock, db:  # one transaction, one fsync, per request
            db.executemany(INSERT, rows)
    return {"processed": processed, "failed": failed, "errors": errors}
