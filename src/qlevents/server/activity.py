"""The activity ledger: what each account's events did, per minute, for the dashboard.

Two halves. :class:`ActivityRecorder` lives in each server worker: ``record()`` is called once
per answered ``POST /events`` and only adds to dicts in memory (no I/O). Every second its
flusher writes what accumulated into ``<data-dir>/activity.sqlite3`` (in a thread, off the
event loop), so every worker, the dashboard and the CLI read the same ledger through
:class:`ActivityLedger`.

What it keeps, per account (by its stable id; events with an unknown key under ``""``):

- per-minute counts: processed, failed by error code (an event counts once, under its first
  problem, as in /metrics), wrong-endpoint failures by the endpoint the account is homed on,
  and live events skipped by sampling;
- the time of the last event, and the ingestion lag (receipt to durable) per minute;
- recent failed events exactly as sent, with their errors: at most ``failed_per_second`` per
  account per second and worker, the newest ``failed_keep`` per account, ``failed_days`` days;
- the live ring: every event up to ``live_per_second`` per account per second and worker,
  a sample above (the skipped ones are counted), the newest ``live_keep`` per account.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

from qlevents.events import ErrorEntry, StoredEvent

ACTIVITY_FILE: Final = "activity.sqlite3"
PROCESSED: Final = "processed"
FAILED: Final = "failed"
WRONG_ENDPOINT: Final = "wrong_endpoint"
LIVE_SKIPPED: Final = "live_skipped"
#: Minute counts and lag samples older than this are deleted (the overview shows 7 days).
KEEP_MINUTES_DAYS: Final = 8
# Names in the ledger's meta table: this node's id, and the cluster's activity stream (its
# identity, the last sequence applied).
NODE: Final = "node"
STREAM: Final = "stream"
APPLIED: Final = "applied"
_key_of_stored: Final = attrgetter("client_key")
_encode: Final = msgspec.json.Encoder().encode
log: Final = logging.getLogger("qlevents.activity")
Count = Annotated[int, msgspec.Meta(ge=0)]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS counts (
    account TEXT NOT NULL, minute INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (account, minute, kind, detail)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lag (
    account TEXT NOT NULL, minute INTEGER NOT NULL, n INTEGER NOT NULL,
    total REAL NOT NULL, worst REAL NOT NULL, PRIMARY KEY (account, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last_event (account TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS failed_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL, received_at REAL NOT NULL,
    body BLOB NOT NULL, errors TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS failed_events_account ON failed_events (account, id);
CREATE TABLE IF NOT EXISTS live (
    id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL, at REAL NOT NULL,
    outcome TEXT NOT NULL, code TEXT NOT NULL, product_id TEXT NOT NULL, body TEXT NOT NULL,
    errors TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS live_account ON live (account, id);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ActivitySettings(msgspec.Struct, frozen=True, kw_only=True):
    """The ledger's bounds: the group ``dashboard.activity`` of the server's settings, so
    each is a ``qlevents serve`` option, a ``QLEVENTS_*`` variable and a config file key."""

    #: Live events kept per account per second (per worker); above it, a counted sample.
    live_per_second: Count = 20
    #: Newest live events kept per account.
    live_keep: Count = 500
    #: Failed events kept as sent per account per second (per worker); all are counted.
    failed_per_second: Count = 20
    #: Newest failed events kept per account, and for how many days.
    failed_keep: Count = 1000
    failed_days: Annotated[float, msgspec.Meta(ge=0)] = 7.0
    #: Seconds between two writes of what the recorder counted into the ledger's file.
    activity_flush_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1.0


class _KeyOnly(msgspec.Struct):
    client_key: object = None
    product_id: object = None


_read_key: Final = msgspec.json.Decoder(_KeyOnly).decode


def _peek(raw: bytes | msgspec.Raw) -> tuple[str | None, str]:
    """The client key (if a string) and product id (as text) of a failed event as sent."""
    try:
        found = _read_key(raw)
    except msgspec.DecodeError:
        return None, ""
    key = found.client_key if isinstance(found.client_key, str) else None
    product = found.product_id if isinstance(found.product_id, str) else ""
    return key, product[:256]


#: A key's slot in :class:`_Pending`: [processed events, last event's time, requests with
#: processed events, their lag's total, its worst, live events it may still show]. A list,
#: updated in place by index: the cheapest thing the request path can do.
Slot = list[float]


@dataclass(slots=True)
class _Pending:
    """What one flush interval accumulated, by client key ("" for no readable key)."""

    live_per_second: int
    started: float = field(default_factory=time.time)
    keys: dict[str, Slot] = field(default_factory=dict)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)
    wrong_endpoint: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (key, at, outcome, code, product_id, body (a stored event is encoded at flush), errors)
    live: list[tuple[str, float, str, str, str, str | StoredEvent, str]] = field(
        default_factory=list
    )
    # (key, received_at, body as sent, errors json)
    failed_events: list[tuple[str, float, bytes, str]] = field(default_factory=list)
    failed_left: dict[str, int] = field(default_factory=dict)

    def slot(self, key: str) -> Slot:
        found = self.keys.get(key)
        if found is None:
            found = self.keys[key] = [0, 0.0, 0, 0.0, 0.0, self.live_per_second]
        return found


class Delta(msgspec.Struct, frozen=True, array_like=True):
    """What one flush of one worker adds to a ledger, by account id: the message a node
    publishes to the cluster's activity stream (activity_jetstream.py), msgpack-encoded."""

    #: The node whose recorder counted it (:attr:`ActivityLedger.node_id`).
    origin: str
    #: The minute (Unix time // 60) it is counted in.
    minute: int
    #: (account, kind, detail, n): ``counts`` rows to add.
    counts: list[tuple[str, str, str, int]] = []
    #: (account, requests, total seconds, worst seconds)
    lags: list[tuple[str, int, float, float]] = []
    #: (account, time of its last event)
    last: list[tuple[str, float]] = []
    #: (account, at, outcome, code, product_id, body, errors json)
    live: list[tuple[str, float, str, str, str, str, str]] = []
    #: (account, received_at, body as sent, errors json)
    failed: list[tuple[str, float, bytes, str]] = []

    @property
    def empty(self) -> bool:
        return not (self.counts or self.lags or self.last or self.live or self.failed)


def delta_of(origin: str, minute: int, pending: _Pending, account: Callable[[str], str]) -> Delta:
    """A flush interval's counts by account id (``account`` maps a key to its account)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    lags: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    # Every event is shown live or skipped: the skipped are the others.
    shown = Counter((entry[0], entry[2]) for entry in pending.live)
    failed_by_key: Counter[str] = Counter()
    for (key, code), n in pending.failed.items():
        counts[account(key), FAILED, code] += n
        failed_by_key[key] += n
    for key, (processed, at, requests, total, worst, _) in pending.keys.items():
        acc = account(key)
        if processed:
            counts[acc, PROCESSED, ""] += int(processed)
        skipped = int(processed) - shown[key, PROCESSED] + failed_by_key[key] - shown[key, FAILED]
        if skipped:
            counts[acc, LIVE_SKIPPED, ""] += skipped
        if requests:
            into = lags.setdefault(acc, [0.0, 0.0, 0.0])
            into[0] += requests
            into[1] += total
            into[2] = max(into[2], worst)
        if at:
            last[acc] = max(at, last.get(acc, 0.0))
    for (key, endpoint), n in pending.wrong_endpoint.items():
        counts[account(key), WRONG_ENDPOINT, endpoint] += n
    return Delta(
        origin,
        minute,
        [(a, kind, detail, n) for (a, kind, detail), n in counts.items()],
        [(a, int(n), total, worst) for a, (n, total, worst) in lags.items()],
        list(last.items()),
        [
            (account(key), at, outcome, code, product, *_live_body(body, errors))
            for key, at, outcome, code, product, body, errors in pending.live
        ],
        [(account(key), at, body, errs) for key, at, body, errs in pending.failed_events],
    )


class ActivityRecorder:
    """Counts each request's outcome in memory; ``start()`` runs the flusher."""

    def __init__(
        self,
        ledger: ActivityLedger,
        resolve: Callable[[str], str | None],
        settings: ActivitySettings | None = None,
        key_uses: Callable[[Mapping[str, float]], None] | None = None,
        share: Callable[[Delta], None] | None = None,
    ) -> None:
        """``resolve`` maps a client key to its account's id (None: no such account);
        ``key_uses`` is given each key's last use at most once a minute; ``share`` (on a
        cluster) each flush's delta once it is in the local ledger."""
        self.ledger = ledger
        self.share = share
        self.resolve = resolve
        self.settings = settings or ActivitySettings()
        self._pending = _Pending(self.settings.live_per_second)
        self._keys = self._pending.keys
        self._key_uses = key_uses
        self._uses: dict[str, float] = {}
        self._uses_written = 0.0
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None  # the write running in a thread

    def record(
        self,
        processed: list[StoredEvent],
        failed: list[msgspec.Raw],
        errors: list[ErrorEntry],
        received_at: float,
        durable_at: float,
    ) -> None:
        """One answered request: its stored events, its failed events as sent and the errors
        (in request order, as the answer holds them), when it was received (Unix time) and
        when its events were durable. Called on the event loop (the flusher takes what it
        holds there too)."""
        if processed:
            key = processed[0].client_key
            n = len(processed)
            if n == 1 or len(set(map(_key_of_stored, processed))) == 1:
                # The request path's usual case, kept to a dict lookup and a few updates.
                slot = self._keys.get(key)
                if slot is None:
                    slot = self._pending.slot(key)
                slot[0] += n
                slot[1] = received_at
                slot[2] += 1
                spent = durable_at - received_at
                slot[3] += spent
                if spent > slot[4]:  # noqa: PLR1730 (cheaper than calling max)
                    slot[4] = spent
                if slot[5] > 0:
                    self._live(key, slot, processed, received_at)
            else:  # several accounts in one request (rare): one group each
                groups: dict[str, list[StoredEvent]] = {}
                for event in processed:
                    groups.setdefault(event.client_key, []).append(event)
                for events in groups.values():
                    self.record(events, [], [], received_at, durable_at)
        if failed:
            self._failed(failed, errors, received_at)

    def _live(self, key: str, slot: Slot, events: list[StoredEvent], received_at: float) -> None:
        left = int(slot[5])
        kept = events[-left:] if left < len(events) else events
        slot[5] = left - len(kept)
        live = self._pending.live
        for event in kept:  # encoded at flush time, off the request's path
            live.append((key, received_at, PROCESSED, "", event.product_id, event, "[]"))

    def _failed(
        self, failed: list[msgspec.Raw], errors: list[ErrorEntry], received_at: float
    ) -> None:
        # Failures take the slow path already; here each is read for its key and grouped.
        pending = self._pending
        by_event: list[list[ErrorEntry]] = []
        index = None
        for error in errors:
            if error.index is None:
                continue
            if error.index != index:
                index = error.index
                by_event.append([])
            by_event[-1].append(error)
        for raw, problems in zip(failed, by_event, strict=False):
            key, product = _peek(raw)
            who = key or ""
            first = problems[0].code
            pending.failed[who, first] += 1
            slot = self._keys.get(who) or pending.slot(who)
            slot[1] = received_at
            for problem in problems:
                if problem.code == WRONG_ENDPOINT and problem.endpoint:
                    pending.wrong_endpoint[who, problem.endpoint] += 1
            shown = ""
            left = pending.failed_left.get(who, self.settings.failed_per_second)
            if left > 0:
                pending.failed_left[who] = left - 1
                shown = _encode(problems).decode()
                pending.failed_events.append((who, received_at, bytes(raw), shown))
            if slot[5] > 0:  # else skipped: counted at flush, as for processed events
                slot[5] -= 1
                text = bytes(raw).decode("utf-8", "replace")
                shown = shown or _encode(problems).decode()
                pending.live.append((who, received_at, FAILED, first, product, text, shown))

    # --- flushing ------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="qlevents-activity")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # Cancelling the task does not stop a write already running in its thread: wait for
        # it, so that the last write below (and the books' closing after it) never overlap.
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
            self._writing = None
        await asyncio.to_thread(self._write, self._take())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.activity_flush_seconds)
            # Taken on the event loop, where record() runs: no request adds to it meanwhile.
            pending = self._take()
            self._writing = asyncio.ensure_future(asyncio.to_thread(self._write, pending))
            try:
                await asyncio.shield(self._writing)
            except asyncio.CancelledError:
                raise
            except Exception:  # the ledger must never take the service down
                log.exception("could not write the activity ledger")

    def flush(self) -> None:
        """Write what accumulated since the last flush (on the thread that records)."""
        self._write(self._take())

    def _take(self) -> _Pending:
        pending, self._pending = self._pending, _Pending(self.settings.live_per_second)
        self._keys = self._pending.keys
        return pending

    def _write(self, pending: _Pending) -> None:
        uses = self._uses
        for key, slot in pending.keys.items():
            if key and slot[1]:
                uses[key] = slot[1]
        accounts: dict[str, str] = {}

        def account(key: str) -> str:
            if key not in accounts:
                accounts[key] = (self.resolve(key) or "") if key else ""
            return accounts[key]

        delta = delta_of(self.ledger.node_id, int(pending.started // 60), pending, account)
        self.ledger.apply(delta, self.settings)
        if self.share is not None and not delta.empty:
            self.share(delta)
        now = time.time()
        if self._key_uses is not None and uses and now - self._uses_written >= 60:
            self._uses, self._uses_written = {}, now
            self._key_uses(uses)


@dataclass(frozen=True, slots=True)
class LiveEvent:
    id: int
    at: float
    outcome: str
    code: str
    product_id: str
    body: str
    errors: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class FailedEvent:
    id: int
    received_at: float
    body: bytes
    errors: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Totals:
    processed: int
    failed: int
    by_code: dict[str, int]
    wrong_endpoint: dict[str, int]
    live_skipped: int

    @property
    def failure_rate(self) -> float | None:
        seen = self.processed + self.failed
        return self.failed / seen if seen else None


class ActivityLedger:
    """``<data-dir>/activity.sqlite3``: written by the recorders, read by the dashboard."""

    def __init__(self, data_dir: str | Path, *, readonly: bool = False) -> None:
        """``readonly``: for a command that reads (the file must exist; nothing is created)."""
        path = Path(data_dir)
        if readonly:
            uri = (path / ACTIVITY_FILE).absolute().as_uri() + "?mode=ro"
            self._conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            path.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                path / ACTIVITY_FILE, isolation_level=None, check_same_thread=False
            )
        # One connection shared by the flusher's and the dashboard's threads: one at a time.
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA busy_timeout = 5000")
        if not readonly:
            self._conn.execute("PRAGMA journal_mode = WAL")
            # Counters, not acknowledged events: losing the last second in a power cut is fine.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta VALUES (?, ?)", (NODE, secrets.token_hex(8))
            )
        self._pruned = 0.0

    @functools.cached_property
    def node_id(self) -> str:
        """This data directory's id among the nodes of a cluster (made with the file)."""
        with self._lock:
            return self._meta(NODE) or ""

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # --- writing -------------------------------------------------------------------------

    def apply(self, delta: Delta, settings: ActivitySettings) -> None:
        """Add one flush's delta (this node's own) to the ledger, in one transaction."""
        now = time.time()
        if delta.empty and now - self._pruned < 60:
            return
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._add(delta)
                self._bound(now, delta, settings)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def apply_shared(self, batch: list[tuple[int, Delta]], settings: ActivitySettings) -> int:
        """Add the deltas of the cluster's activity stream (by stream sequence, ascending)
        that this ledger has not applied yet, and none of this node's own (``apply`` wrote
        them at flush), in one transaction with the last sequence applied: several workers
        applying the same messages, a restart or a redelivery never count twice. How many
        deltas were added."""
        added = 0
        own = self.node_id  # before the lock: reading it takes the lock once
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                applied = self._meta_int(APPLIED)
                rows: list[str] = []
                last = applied
                for sequence, delta in batch:
                    if sequence <= last:
                        continue
                    last = sequence
                    if delta.origin != own:
                        self._add(delta)
                        rows.extend(row[0] for row in delta.live)
                        added += 1
                if last > applied:
                    self._set_meta(APPLIED, str(last))
                    self._trim_live(set(rows), settings.live_keep)
                    accounts = {row[0] for _, d in batch for row in d.failed}
                    self._trim_failed(accounts, settings.failed_keep)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return added

    def applied_sequence(self, stream_id: str) -> int:
        """The last sequence of the stream ``stream_id`` (its creation time: a stream
        deleted and made again starts over) this ledger applied; 0 for another stream."""
        with self._lock:
            if self._meta(STREAM) != stream_id:
                self._conn.execute("BEGIN IMMEDIATE")
                self._set_meta(STREAM, stream_id)
                self._set_meta(APPLIED, "0")
                self._conn.execute("COMMIT")
            return self._meta_int(APPLIED)

    def _meta(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _meta_int(self, name: str) -> int:
        return int(self._meta(name) or 0)

    def _set_meta(self, name: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def _add(self, delta: Delta) -> None:
        conn = self._conn
        minute = delta.minute
        conn.executemany(
            "INSERT INTO counts VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE"
            " SET n = n + excluded.n",
            [(a, minute, kind, detail, n) for a, kind, detail, n in delta.counts],
        )
        conn.executemany(
            "INSERT INTO lag VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
            " n = n + excluded.n, total = total + excluded.total,"
            " worst = MAX(worst, excluded.worst)",
            [(a, minute, n, total, worst) for a, n, total, worst in delta.lags],
        )
        conn.executemany(
            "INSERT INTO last_event VALUES (?, ?) ON CONFLICT DO UPDATE"
            " SET at = MAX(at, excluded.at)",
            delta.last,
        )
        conn.executemany(
            "INSERT INTO live (account, at, outcome, code, product_id, body, errors)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            delta.live,
        )
        conn.executemany(
            "INSERT INTO failed_events (account, received_at, body, errors) VALUES (?, ?, ?, ?)",
            delta.failed,
        )

    def _bound(self, now: float, delta: Delta, settings: ActivitySettings) -> None:
        if now - self._pruned >= 60:
            self._prune(now, settings)
            self._pruned = now
        else:  # the counts bounds hold after every write, the ages' every minute
            self._trim_live({row[0] for row in delta.live}, settings.live_keep)
            self._trim_failed({row[0] for row in delta.failed}, settings.failed_keep)

    def _trim_live(self, accounts: set[str], keep: int) -> None:
        for acc in accounts:
            self._conn.execute(
                "DELETE FROM live WHERE account = ? AND id <= (SELECT id FROM live WHERE"
                " account = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (acc, acc, keep),
            )

    def _trim_failed(self, accounts: set[str], keep: int) -> None:
        for acc in accounts:
            self._conn.execute(
                "DELETE FROM failed_events WHERE account = ? AND id <= (SELECT id FROM"
                " failed_events WHERE account = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (acc, acc, keep),
            )

    def _prune(self, now: float, settings: ActivitySettings) -> None:
        oldest_minute = int(now // 60) - KEEP_MINUTES_DAYS * 1440
        self._conn.execute("DELETE FROM counts WHERE minute < ?", (oldest_minute,))
        self._conn.execute("DELETE FROM lag WHERE minute < ?", (oldest_minute,))
        self._conn.execute(
            "DELETE FROM failed_events WHERE received_at < ?", (now - settings.failed_days * 86400,)
        )
        live = self._conn.execute("SELECT DISTINCT account FROM live").fetchall()
        self._trim_live({acc for (acc,) in live}, settings.live_keep)
        failed = self._conn.execute("SELECT DISTINCT account FROM failed_events").fetchall()
        self._trim_failed({acc for (acc,) in failed}, settings.failed_keep)

    # --- reading -------------------------------------------------------------------------

    def totals(self, account: str, since: float, until: float | None = None) -> Totals:
        """Counts of ``account`` from ``since`` (Unix time, to the minute) to ``until``."""
        first = int(since // 60)
        last = int((until if until is not None else time.time()) // 60)
        rows = self._query(
            "SELECT kind, detail, SUM(n) FROM counts WHERE account = ? AND minute >= ?"
            " AND minute <= ? GROUP BY kind, detail",
            (account, first, last),
        )
        processed = failed = skipped = 0
        by_code: dict[str, int] = {}
        wrong: dict[str, int] = {}
        for kind, detail, n in rows:
            if kind == PROCESSED:
                processed += n
            elif kind == FAILED:
                failed += n
                by_code[detail] = n
            elif kind == WRONG_ENDPOINT:
                wrong[detail] = n
            elif kind == LIVE_SKIPPED:
                skipped += n
        return Totals(processed, failed, by_code, wrong, skipped)

    def last_seen_by_code(self, account: str, since: float) -> dict[str, float]:
        """The minute (as Unix time) each error code was last counted since ``since``."""
        rows = self._query(
            "SELECT detail, MAX(minute) FROM counts WHERE account = ? AND kind = ?"
            " AND minute >= ? GROUP BY detail",
            (account, FAILED, int(since // 60)),
        )
        return {code: minute * 60.0 for code, minute in rows}

    def series(
        self, account: str, since: float, step_minutes: int
    ) -> tuple[list[float], list[int], list[int]]:
        """Processed and failed events per ``step_minutes`` from ``since`` to now (for a chart):
        the times (Unix seconds, each step's start) and the two counts, zeros included."""
        start = int(since // 60) // step_minutes * step_minutes
        end = int(time.time() // 60)
        steps = (end - start) // step_minutes + 1
        processed = [0] * steps
        failed = [0] * steps
        rows = self._query(
            "SELECT minute, kind, SUM(n) FROM counts WHERE account = ? AND minute >= ?"
            " AND kind IN (?, ?) GROUP BY minute, kind",
            (account, start, PROCESSED, FAILED),
        )
        for minute, kind, n in rows:
            slot = (minute - start) // step_minutes
            if 0 <= slot < steps:
                (processed if kind == PROCESSED else failed)[slot] += n
        times = [float((start + i * step_minutes) * 60) for i in range(steps)]
        return times, processed, failed

    def last_event(self, account: str) -> float | None:
        rows = self._query("SELECT at FROM last_event WHERE account = ?", (account,))
        return float(rows[0][0]) if rows else None

    def lag(self, account: str, since: float) -> tuple[int, float, float]:
        """(requests, mean seconds, worst seconds) from receipt to durable since ``since``."""
        rows = self._query(
            "SELECT SUM(n), SUM(total), MAX(worst) FROM lag WHERE account = ? AND minute >= ?",
            (account, int(since // 60)),
        )
        n, total, worst = rows[0]
        if not n:
            return 0, 0.0, 0.0
        return int(n), float(total) / n, float(worst)

    def health(self, since: float) -> dict[str, tuple[int, int, float | None]]:
        """Every account's (processed, failed, last event) since ``since``."""
        found: dict[str, list[Any]] = {}
        for acc, kind, n in self._query(
            "SELECT account, kind, SUM(n) FROM counts WHERE minute >= ? AND kind IN (?, ?)"
            " GROUP BY account, kind",
            (int(since // 60), PROCESSED, FAILED),
        ):
            entry = found.setdefault(acc, [0, 0, None])
            entry[0 if kind == PROCESSED else 1] += n
        for acc, at in self._query("SELECT account, at FROM last_event"):
            found.setdefault(acc, [0, 0, None])[2] = at
        return {acc: (p, f, at) for acc, (p, f, at) in found.items()}

    def live(
        self,
        account: str,
        *,
        after: int = 0,
        limit: int = 100,
        outcome: str = "",
        code: str = "",
        product_id: str = "",
    ) -> list[LiveEvent]:
        """The newest live events of ``account`` after the id ``after``, newest first."""
        where = ["account = ?", "id > ?"]
        params: list[Any] = [account, after]
        for column, value in (("outcome", outcome), ("code", code), ("product_id", product_id)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        rows = self._query(
            "SELECT id, at, outcome, code, product_id, body, errors FROM live WHERE "
            + " AND ".join(where)
            + " ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [
            LiveEvent(i, at, outc, c, prod, body, json.loads(errs))
            for i, at, outc, c, prod, body, errs in rows
        ]

    def failed_events(self, account: str | None, limit: int = 50) -> list[FailedEvent]:
        """Recent failed events as sent (of one account, or all), newest first."""
        if account is None:
            sql = "SELECT id, received_at, body, errors FROM failed_events ORDER BY id DESC LIMIT ?"
            params: tuple[Any, ...] = (limit,)
        else:
            sql = (
                "SELECT id, received_at, body, errors FROM failed_events WHERE account = ?"
                " ORDER BY id DESC LIMIT ?"
            )
            params = (account, limit)
        return [
            FailedEvent(i, at, bytes(b), json.loads(e)) for i, at, b, e in self._query(sql, params)
        ]

    def export_failed(
        self, account: str | None = None, client_key: str | None = None
    ) -> Iterator[bytes]:
        """Every kept failed event (of one account; sent with one client key), oldest first,
        as NDJSON lines: ``{"received_at", "account" (its id; null for a key no account has),
        "event" (as sent), "errors"}`` (``qlevents events export --failed``)."""
        after = 0
        while True:
            where = "id > ?" + ("" if account is None else " AND account = ?")
            params: tuple[Any, ...] = (after,) if account is None else (after, account)
            rows = self._query(
                "SELECT id, account, received_at, body, errors FROM failed_events WHERE "
                + where
                + " ORDER BY id LIMIT 1000",
                params,
            )
            for row_id, acc, at, body, errors in rows:
                after = row_id
                if client_key is not None and _peek(bytes(body))[0] != client_key:
                    continue
                line = {
                    "received_at": _rfc3339(at),
                    "account": acc or None,  # None: a key no account has
                    "event": msgspec.Raw(_one_line(bytes(body))),
                    "errors": msgspec.Raw(errors.encode()),
                }
                yield _encode(line) + b"\n"
            if len(rows) < 1000:
                return


def _live_body(body: str | StoredEvent, errors: str) -> tuple[str, str]:
    if isinstance(body, StoredEvent):
        return _encode(body).decode(), errors
    return body, errors


def _rfc3339(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"


def _one_line(body: bytes) -> bytes:
    """An event as sent, on one line (NDJSON); text that is not JSON as a JSON string."""
    try:
        return msgspec.json.format(body, indent=0)
    except msgspec.DecodeError:
        return _encode(body.decode("utf-8", "replace"))
