"""What the dashboard's activity recorder costs the ingest path, measured in-process.

One ``Ingest`` (the real POST /events handler: body, validation, accounts, store, answer) is
driven directly through ASGI calls on one uvloop event loop, with and without the recorder;
the store keeps nothing, so a request is as cheap as it can be and the recorder's share of it
as large as it can be. Three figures per body:

- side by side: batches of requests timed with ``timeit`` (the process's CPU time), rounds
  alternating with and without the recorder, the fastest round of each; their difference is
  within the noise of a shared machine;
- ``record()`` in place: each call timed where Ingest makes it (caches as a request leaves
  them), less the same timing around a recorder that does nothing; the fastest round;
- the flush (a thread in the server, once a second) after one second of such requests, per
  request.

Not part of ``make bench``; run: ``.venv/bin/python bench/recorder_cost.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qlevents.accounts import AccountBook
from qlevents.events import StoredEvent
from qlevents.server.activity import ActivityLedger, ActivityRecorder
from qlevents.server.directory import AccountDirectory
from qlevents.server.ingest import Ingest
from qlevents.server.metrics import Metrics
from qlevents.server.ratelimit import RateLimiter
from qlevents.store.base import IdempotencyRecord, Replay
from qlevents.store.memory import MemoryEventStore

LOCAL = "http://127.0.0.1:8080/events"


class DiscardingStore(MemoryEventStore):
    """Acknowledges every append and keeps nothing (the timed loops must not grow memory)."""

    async def append(
        self, events: Sequence[StoredEvent], idempotency: IdempotencyRecord | None = None
    ) -> Replay | None:
        return None


class Timed:
    """Stands in for the recorder: passes each call on (or not) and adds up its time."""

    def __init__(self, inner: ActivityRecorder | None) -> None:
        self.inner = inner
        self.ns = self.calls = 0

    def record(self, *arguments: Any) -> None:
        started = time.perf_counter_ns()
        if self.inner is not None:
            self.inner.record(*arguments)
        self.ns += time.perf_counter_ns() - started
        self.calls += 1


def bodies(key: str) -> dict[str, bytes]:
    view = {"client_key": key, "event": "view", "price": 123.41, "product_id": "123-AA-X23",
            "permalink": "https://yourstore.com/123-AA-X23/", "vid": "DASDAS-#CCCC-NA",
            "tags": ["user:new"], "channels": ["online"]}  # fmt: skip
    conversion = {**view, "event": "conversion", "units": 3}
    del conversion["permalink"]
    mixed = [view if i % 2 else conversion for i in range(100)]
    return {
        "1 event": json.dumps([view]).encode(),
        "100 events": json.dumps(mixed).encode(),
        "1 failed event": json.dumps([{**view, "price": "123.41"}]).encode(),
        "100 events, 1 failed": json.dumps([*mixed[:99], {**view, "price": "1"}]).encode(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--seconds", type=float, default=0.03, help="per timing, about")
    args = parser.parse_args()
    try:
        import uvloop

        loop = uvloop.new_event_loop()  # as the server runs
    except ImportError:
        loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        book = AccountBook(data)
        key = book.add("shop").client_key
        directory = AccountDirectory(book, LOCAL)
        directory.reload()
        ingest = Ingest(DiscardingStore(), directory, Metrics(), RateLimiter(0, 0),
                        max_body_bytes=5 * 2**20, max_events=1000,
                        max_inflight_requests=1024, max_inflight_bytes=2**28)  # fmt: skip
        ledger = ActivityLedger(data)
        recorder = ActivityRecorder(ledger, {key: book.get(key).id}.get)
        rows = [
            measure(loop, ingest, recorder, name, body, args.rounds, args.seconds)
            for name, body in bodies(key).items()
        ]
        ledger.close()
        book.close()
    loop.close()
    print(f"{'request':22} {'without':>9} {'with':>9} {'difference':>10} {'record()':>9}"
          f" {'share':>6} {'flush':>8}")  # fmt: skip
    for row in rows:
        print(
            f"{row['body']:22} {row['without_us']:>7.2f}us {row['with_us']:>7.2f}us"
            f" {row['difference_us']:>8.2f}us {row['record_us']:>7.2f}us {row['share']:>6.1%}"
            f" {row['flush_us']:>6.3f}us"
        )
    print(json.dumps(rows))


def measure(
    loop: asyncio.AbstractEventLoop,
    ingest: Ingest,
    recorder: ActivityRecorder,
    name: str,
    body: bytes,
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    scope = {"type": "http", "method": "POST", "path": "/events", "query_string": b"",
             "headers": [(b"content-length", str(len(body)).encode())]}  # fmt: skip
    message = {"type": "http.request", "body": body, "more_body": False}
    answers: set[int] = set()

    async def receive() -> dict[str, Any]:
        return message

    async def send(sent: dict[str, Any]) -> None:
        if sent["type"] == "http.response.start":
            answers.add(sent["status"])

    async def batch(n: int) -> None:
        for _ in range(n):
            await ingest(scope, receive, send)

    def timing(n: int, attached: Any) -> float:
        ingest.recorder = attached
        # CPU time of this process: the machine's other processes do not count in it.
        timer = timeit.Timer(lambda: loop.run_until_complete(batch(n)), timer=time.process_time)
        return timer.timeit(number=1) / n

    n = max(100, int(seconds / timing(200, None)))  # requests per timing
    without: list[float] = []
    with_recorder: list[float] = []
    in_place: list[float] = []
    timer_only: list[float] = []
    gc.disable()  # as timeit does, for the timings in place too
    try:
        for i in range(rounds):
            recorder.flush()  # a new second: the live ring takes events again, as in the server
            pair = [(without, None), (with_recorder, recorder)]
            for into, attached in pair if i % 2 else reversed(pair):
                into.append(timing(n, attached))
            for into, inner in ((in_place, recorder), (timer_only, None)):
                timed = Timed(inner)
                timing(n, timed)
                into.append(timed.ns / timed.calls / 1e9)
    finally:
        gc.enable()
    assert answers == {200}, answers
    # The flusher's work after one second of requests at this rate, per request.
    per_second = int(1 / min(with_recorder))
    recorder.flush()
    timing(per_second, recorder)
    started = time.process_time()
    recorder.flush()
    flush = time.process_time() - started
    best_without, best_with = min(without), min(with_recorder)
    record = min(in_place) - min(timer_only)
    return {
        "body": name,
        "requests_per_timing": n,
        "without_us": best_without * 1e6,
        "with_us": best_with * 1e6,
        "difference_us": (best_with - best_without) * 1e6,
        "record_us": record * 1e6,
        "share": record / best_without,
        "flush_ms": flush * 1e3,
        "flush_us": flush / per_second * 1e6,
    }


if __name__ == "__main__":
    main()
