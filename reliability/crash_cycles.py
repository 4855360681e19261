"""Crash cycles: kill -9 the server at random moments under concurrent load, restart, repeat.

    .venv/bin/python -m reliability.crash_cycles [--cycles 10] [--clients 6] [--seed N]

Several client threads send batches of mixed sizes (1 to 500 events) as fast as the server
answers; half of them send an ``Idempotency-Key`` and retry with it after a connection
error, the others retry without one. Every event carries a unique marker (its
``product_id``). After each kill and restart the store is checked:

* every event listed as processed in a 200 answer is stored (``lost`` must be 0);
* ``PRAGMA integrity_check`` says ok;
* an event is stored twice only if a client re-sent its batch without an idempotency key
  (the server had stored it but died before answering); clients with a key: no duplicates.

Prints one line per cycle and a summary; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tests.support import RunningServer, free_port

BATCH_SIZES = (1, 1, 3, 10, 50, 200, 500)
#: How long one batch keeps being retried before the client gives up on it (seconds).
GIVE_UP_AFTER = 60.0


@dataclass
class Ledger:
    """What the clients saw, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: set[str] = field(default_factory=set)
    """Ids of events listed as processed in a 200 answer."""
    retried_without_key: set[str] = field(default_factory=set)
    """Markers of events re-sent without an idempotency key after an error."""
    with_key: set[str] = field(default_factory=set)
    """Markers of events sent by clients that use idempotency keys."""
    retries_with_key: int = 0
    replays: int = 0
    """Answers marked Idempotent-Replayed: the first attempt was stored, its answer lost."""
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    gave_up: int = 0

    def ack(self, processed: list[dict[str, Any]]) -> None:
        with self.lock:
            self.acked.update(event["id"] for event in processed)
            self.statuses["200"] += 1

    def count(self, what: str) -> None:
        with self.lock:
            self.statuses[what] += 1

    def acked_now(self) -> set[str]:
        with self.lock:
            return set(self.acked)


def make_event(key: str, marker: str, rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:
        return {
            "client_key": key,
            "event": "view",
            "price": round(rng.uniform(0, 500), 2),
            "product_id": marker,
            "permalink": f"https://shop.example/{marker}",
            "tags": ["crash"],
        }
    return {
        "client_key": key,
        "event": "conversion",
        "price": round(rng.uniform(0, 500), 2),
        "product_id": marker,
        "units": rng.randint(1, 5),
        "channels": ["online"],
    }


class LoadClient(threading.Thread):
    """Sends batches back to back; retries a batch until it is answered 200."""

    def __init__(
        self,
        name: str,
        url: str,
        key: str,
        *,
        idempotent: bool,
        seed: int,
        ledger: Ledger,
        stop: threading.Event,
        pause: float = 0.0,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.pause = pause
        self.url, self.key, self.idempotent = url, key, idempotent
        self.rng = random.Random(seed)
        self.ledger, self.stop = ledger, stop

    def run(self) -> None:
        timeout = httpx.Timeout(15.0, connect=2.0)
        with httpx.Client(timeout=timeout) as client:
            for number in itertools.count():
                if self.stop.is_set():
                    return
                size = self.rng.choice(BATCH_SIZES)
                markers = [f"{self.name}-{number}-{i}" for i in range(size)]
                if self.idempotent:
                    with self.ledger.lock:
                        self.ledger.with_key.update(markers)
                batch = [make_event(self.key, m, self.rng) for m in markers]
                self.deliver(client, batch, markers, f"{self.name}-{number}")
                if self.pause:
                    time.sleep(self.rng.uniform(0, self.pause))

    def deliver(
        self, client: httpx.Client, batch: list[dict[str, Any]], markers: list[str], key: str
    ) -> None:
        body = json.dumps(batch).encode()
        headers = {"content-type": "application/json"}
        if self.idempotent:
            headers["idempotency-key"] = key
        deadline = time.monotonic() + GIVE_UP_AFTER
        for attempt in itertools.count():
            if attempt:
                with self.ledger.lock:
                    if self.idempotent:
                        self.ledger.retries_with_key += 1
                    else:
                        self.ledger.retried_without_key.update(markers)
            if time.monotonic() > deadline:
                with self.ledger.lock:
                    self.ledger.gave_up += 1
                return
            try:
                answer = client.post(self.url, content=body, headers=headers)
            except httpx.TransportError as exc:
                self.ledger.count(type(exc).__name__)
                time.sleep(self.rng.uniform(0.05, 0.2))
                continue
            if answer.status_code == 200:
                self.ledger.ack(answer.json()["processed"])
                if "idempotent-replayed" in answer.headers:
                    self.ledger.count("200 replayed")
                    with self.ledger.lock:
                        self.ledger.replays += 1
                return
            self.ledger.count(str(answer.status_code))
            if answer.status_code in (429, 503):
                time.sleep(min(2.0, float(answer.headers.get("retry-after", "1"))))
                continue
            with self.ledger.lock:
                self.ledger.unexpected.append(f"{answer.status_code}: {answer.text[:200]}")
            return


@dataclass
class Check:
    """The store compared with what was acknowledged, after one kill and restart."""

    cycle: int
    up_seconds: float
    acknowledged: int
    stored: int
    lost: int
    duplicates: int
    """Markers stored more than once."""
    bad_duplicates: int
    """Of those, markers no client re-sent without an idempotency key."""
    duplicates_with_key: int
    integrity: str

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.bad_duplicates == 0 and self.integrity == "ok"

    def line(self) -> str:
        return (
            f"cycle {self.cycle:3}: up {self.up_seconds:5.2f}s  acknowledged {self.acknowledged:7}"
            f"  stored {self.stored:7}  lost {self.lost}  duplicates {self.duplicates}"
            f" (with key {self.duplicates_with_key}, unexplained {self.bad_duplicates})"
            f"  integrity {self.integrity}"
        )


def read_store(path: Path) -> tuple[set[str], int, set[str], str]:
    """Straight from the database file: (event ids, row count, duplicated markers, integrity)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("BEGIN")  # one snapshot for every query below
        ids = {row[0] for row in conn.execute("SELECT id FROM events")}
        rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        duplicated = {
            row[0]
            for row in conn.execute(
                "SELECT product_id FROM events GROUP BY product_id HAVING count(*) > 1"
            )
        }
        conn.execute("COMMIT")
        integrity = "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()
    return ids, int(rows), duplicated, integrity


def check_store(
    server: RunningServer, acked: set[str], ledger: Ledger, cycle: int, up: float
) -> Check:
    stored_ids, stored, duplicated, integrity = read_store(server.data_dir / "events.sqlite3")
    with ledger.lock:
        explained = ledger.retried_without_key - ledger.with_key
        with_key = duplicated & ledger.with_key
    return Check(
        cycle=cycle,
        up_seconds=up,
        acknowledged=len(acked),
        stored=stored,
        lost=len(acked - stored_ids),
        duplicates=len(duplicated),
        bad_duplicates=len(duplicated - explained),
        duplicates_with_key=len(with_key),
        integrity=integrity,
    )


@dataclass
class Run:
    checks: list[Check]
    final: Check
    ledger: Ledger

    @property
    def ok(self) -> bool:
        return (
            all(c.ok for c in self.checks)
            and self.final.ok
            and not self.ledger.unexpected
            and self.ledger.gave_up == 0
        )


def run_cycles(
    server: RunningServer,
    *,
    cycles: int,
    clients: int = 4,
    seed: int = 0,
    min_up: float = 0.3,
    max_up: float = 2.0,
    pause: float = 0.0,
    report: Callable[[str], None] = lambda line: None,
) -> Run:
    """Kill -9 ``server`` ``cycles`` times under load from ``clients`` threads."""
    rng = random.Random(seed)
    ledger = Ledger()
    stop = threading.Event()
    key = server.client_key
    threads = [
        LoadClient(
            f"c{i}",
            server.events_url,
            key,
            idempotent=i % 2 == 0,
            seed=rng.randrange(2**32),
            ledger=ledger,
            stop=stop,
            pause=pause,
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    checks = []
    try:
        for cycle in range(1, cycles + 1):
            started = time.monotonic()
            # Let traffic reach the restarted server, then kill it at a random moment.
            before = ledger.statuses["200"]
            while ledger.statuses["200"] == before and time.monotonic() - started < 10:
                time.sleep(0.02)
            time.sleep(rng.uniform(min_up, max_up))
            up = time.monotonic() - started
            server.kill()
            acked = ledger.acked_now()  # every 200 the clients saw before the crash
            server.start()
            result = check_store(server, acked, ledger, cycle, up)
            report(result.line())
            checks.append(result)
    finally:
        stop.set()
        for thread in threads:
            thread.join(GIVE_UP_AFTER + 20)
    final = check_store(server, ledger.acked_now(), ledger, 0, 0.0)
    return Run(checks, final, ledger)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--min-up", type=float, default=0.3, help="shortest uptime (s)")
    parser.add_argument("--max-up", type=float, default=3.0, help="longest uptime (s)")
    parser.add_argument(
        "--pause", type=float, default=0.05, help="most seconds a client waits between batches"
    )
    parser.add_argument("--data-dir", type=Path, help="keep the data here (default: a temp dir)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    with tempfile.TemporaryDirectory(prefix="qlevents-crash-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        server = RunningServer(data_dir, free_port(), [], Path(tmp) / "server.log")
        print(f"crash cycles: {args.cycles} cycles, {args.clients} clients, seed {seed}")
        server.start()
        try:
            run = run_cycles(
                server,
                cycles=args.cycles,
                clients=args.clients,
                seed=seed,
                min_up=args.min_up,
                max_up=args.max_up,
                pause=args.pause,
                report=lambda line: print(line, flush=True),
            )
        finally:
            if server.process is not None:
                server.stop(signal.SIGKILL)
    final, ledger = run.final, run.ledger
    print("--- summary")
    print(f"cycles run:            {len(run.checks)}")
    print(f"acknowledged events:   {final.acknowledged}")
    print(f"stored events:         {final.stored}")
    print(f"lost (acked, missing): {final.lost}")
    print(
        f"duplicated markers:    {final.duplicates} (all from retries without a key:"
        f" {final.bad_duplicates == 0}; from clients with a key: {final.duplicates_with_key})"
    )
    print(f"retries with a key:    {ledger.retries_with_key} ({ledger.replays} replayed)")
    print(f"integrity_check:       {final.integrity}")
    print(f"answers and errors:    {dict(sorted(ledger.statuses.items()))}")
    if ledger.unexpected:
        print(f"unexpected answers:    {ledger.unexpected[:5]}")
    if ledger.gave_up:
        print(f"batches given up:      {ledger.gave_up}")
    print("PASS" if run.ok else "FAIL")
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
