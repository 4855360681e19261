"""SDK benchmark: qlevents.Client vs segment's analytics-python, side by side in one run.

Two measures, each over several interleaved rounds (medians reported; the machine is
shared and noisy):

- **call cost**: the time one ``client.view(...)`` takes in the caller's thread, vs one
  ``analytics.track(...)`` carrying the same fields, with each sender running behind.
- **end to end**: events/s from the first call to ``flush()`` returning, qlevents against
  ``qlevents serve`` (SQLite, fsync on: synchronous=FULL), analytics-python against a no-op
  endpoint of its own format (``bench/analytics_noop.py``, which stores nothing).

Zero loss is checked on both sides: the qlevents store must hold every event exactly once;
the no-op must have received every analytics event.

    .venv/bin/python bench/client_bench.py            # ~1-2 minutes
    .venv/bin/python bench/client_bench.py --quick    # smoke run

Targets: call cost <= 1/3 of analytics-python's; end to end >= 3x its events/s; zero loss.
Exit status 0 when the run was sound and the targets met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PRODUCT = {
    "price": 123.41,
    "permalink": "https://yourstore.com/123-AA-X23/",
    "vid": "DASDAS-#CCCC-NA",
    "tags": ["user:new"],
    "channels": ["online"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode})")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextlib.contextmanager
def running(command: list[str], health: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(health, process)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stored_count(data_dir: Path) -> tuple[int, int]:
    """(events stored, distinct product ids) in the qlevents store."""
    with contextlib.closing(sqlite3.connect(data_dir / "events.sqlite3")) as conn:
        total = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        distinct = conn.execute("SELECT COUNT(DISTINCT product_id) FROM events").fetchone()[0]
    return int(total), int(distinct)


def noop_count(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return int(json.load(answer)["count"])


# --- the two sides ---------------------------------------------------------------------------


def qlevents_round(
    key: str, url: str, calls: int, tag: str, options: dict[str, Any]
) -> tuple[float, float]:
    """(seconds per view() call, events/s end to end)."""
    from qlevents import Client

    client = Client(key, url, max_queue_size=calls + 1, **options)
    try:
        view = client.view
        started = time.perf_counter()
        for i in range(calls):
            view(
                product_id=f"{tag}-{i}",
                price=PRODUCT["price"],
                permalink=PRODUCT["permalink"],
                vid=PRODUCT["vid"],
                tags=PRODUCT["tags"],
                channels=PRODUCT["channels"],
            )
        enqueued = time.perf_counter()
        if not client.flush(120):
            raise RuntimeError(f"qlevents: flush timed out: {client.stats()}")
        done = time.perf_counter()
        stats = client.stats()
        if stats["stored"] != calls:
            raise RuntimeError(f"qlevents: not every event was processed: {stats}")
    finally:
        client.close()
    return (enqueued - started) / calls, calls / (done - started)


def server_ceiling(key: str, url: str, calls: int, tag: str) -> float:
    """Events/s the server takes from a sender with nothing else to do: pre-encoded bodies of
    500 events, one request at a time, each with an Idempotency-Key (as the SDK sends)."""
    import httpx
    import msgspec

    events = [
        msgspec.json.encode(
            {"event": "view", "client_key": key, "product_id": f"{tag}-{i}", **PRODUCT}
        )
        for i in range(calls)
    ]
    bodies = [b"[" + b",".join(events[i : i + 500]) + b"]" for i in range(0, calls, 500)]
    with httpx.Client(timeout=30) as http:
        started = time.perf_counter()
        for n, body in enumerate(bodies):
            answer = http.post(url, content=body, headers={"idempotency-key": f"{tag}-{n}"})
            if answer.status_code != 200:
                raise RuntimeError(f"server ceiling: status {answer.status_code}")
        return calls / (time.perf_counter() - started)


def analytics_round(host: str, calls: int, tag: str) -> tuple[float, float]:
    from segment.analytics import Client as AnalyticsClient

    client = AnalyticsClient("bench-write-key", host=host, max_queue_size=calls + 1)
    try:
        track = client.track
        started = time.perf_counter()
        for i in range(calls):
            track(
                user_id=PRODUCT["vid"],
                event="Product Viewed",
                properties={"product_id": f"{tag}-{i}", **PRODUCT},
            )
        enqueued = time.perf_counter()
        client.flush()  # analytics-python: blocks until its queue is empty (no timeout)
        done = time.perf_counter()
    finally:
        client.shutdown()
    return (enqueued - started) / calls, calls / (done - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000, help="events per round")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a qlevents.Client option to try (default: the defaults), e.g. max_batch_events=1000",
    )
    args = parser.parse_args()
    options: dict[str, Any] = {}
    for item in args.option:
        name, _, value = item.partition("=")
        options[name] = json.loads(value)
    rounds, calls = (2, 5_000) if args.quick else (args.rounds, args.events)
    logging.basicConfig(level=logging.WARNING)
    python = sys.executable
    results: dict[str, list[tuple[float, float]]] = {"qlevents": [], "analytics": []}
    ceilings: list[float] = []
    sent_to_noop = 0
    with tempfile.TemporaryDirectory(prefix="qlevents-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        port, noop_port = free_port(), free_port()
        qlevents_cmd = [
            python, "-m", "qlevents", "serve", "--port", str(port), "--data-dir", str(data_dir),
            "--no-access-log", "--log-level", "warning", "--demo",
        ]  # fmt: skip
        noop_cmd = [python, str(HERE / "analytics_noop.py"), "--port", str(noop_port)]
        noop = f"http://127.0.0.1:{noop_port}"
        with (
            running(qlevents_cmd, f"http://127.0.0.1:{port}/healthz"),
            running(noop_cmd, f"{noop}/count"),
        ):
            from qlevents.accounts import AccountBook

            book = AccountBook(data_dir)
            key = next(a.client_key for a in book.all() if a.name == "demo")
            book.close()
            url = f"http://127.0.0.1:{port}/events"
            qlevents_round(key, url, 500, "warmup", options)
            analytics_round(noop, 500, "warmup")
            sent_to_noop += 500
            for n in range(rounds):
                sides: list[tuple[str, Callable[[], tuple[float, float]]]] = [
                    ("qlevents", lambda n=n: qlevents_round(key, url, calls, f"r{n}", options)),
                    ("analytics", lambda n=n: analytics_round(noop, calls, f"r{n}")),
                ]
                if n % 2:
                    sides.reverse()
                for name, run in sides:
                    results[name].append(run())
                sent_to_noop += calls
                ceilings.append(server_ceiling(key, url, calls, f"c{n}"))
                q, a = results["qlevents"][-1], results["analytics"][-1]
                print(
                    f"round {n + 1}/{rounds}: qlevents {q[0] * 1e6:.2f} us/call {q[1]:,.0f} ev/s;"
                    f" analytics-python {a[0] * 1e6:.2f} us/call {a[1]:,.0f} ev/s;"
                    f" server ceiling {ceilings[-1]:,.0f} ev/s",
                    file=sys.stderr,
                )
            total, distinct = stored_count(data_dir)
            received = noop_count(f"{noop}/count")
    expected = 500 + 2 * rounds * calls  # the SDK's events and the ceiling's
    q_call = statistics.median(r[0] for r in results["qlevents"])
    a_call = statistics.median(r[0] for r in results["analytics"])
    q_rate = statistics.median(r[1] for r in results["qlevents"])
    a_rate = statistics.median(r[1] for r in results["analytics"])
    q_lost, a_lost = expected - distinct, sent_to_noop - received
    call_ok, rate_ok = q_call <= a_call / 3, q_rate >= 3 * a_rate
    loss_ok = q_lost == 0 and total == distinct and a_lost == 0
    print(
        f"\n{rounds} rounds of {calls:,} view events; medians. Python {platform.python_version()},"
        f" {os.cpu_count()} CPUs, {platform.machine()}; qlevents serve: SQLite, synchronous=FULL."
        f" Client options: {options or 'the defaults'}.\n"
    )
    print("| measure | qlevents `Client.view()` | analytics-python `track()` | ratio | target |")
    print("|---|---:|---:|---:|---|")
    print(
        f"| call cost in the caller's thread | {q_call * 1e6:.2f} µs | {a_call * 1e6:.2f} µs"
        f" | {a_call / q_call:.1f}x cheaper | ≥ 3x {'✅' if call_ok else '❌'} |"
    )
    print(
        f"| end to end (first call → flush done) | {q_rate:,.0f} events/s | {a_rate:,.0f}"
        f" events/s (no-op endpoint) | {q_rate / a_rate:.1f}x | ≥ 3x {'✅' if rate_ok else '❌'} |"
    )
    ceiling = statistics.median(ceilings)
    print(
        f"| the server's ceiling: 500-event bodies, pre-encoded, one at a time, with keys"
        f" | {ceiling:,.0f} events/s | | {ceiling / a_rate:.1f}x | (bounds the row above) |"
    )
    print(
        f"| events lost | {q_lost} of {expected:,} (stored twice: {total - distinct})"
        f" | {a_lost} of {sent_to_noop:,} | | 0 {'✅' if loss_ok else '❌'} |"
    )
    return 0 if call_ok and rate_ok and loss_ok else 1


if __name__ == "__main__":
    sys.exit(main())
