"""Slow clients: do 500 slowloris connections hurt the p99 of normal clients?

    .venv/bin/python -m reliability.slowloris               # 500 slow connections, 2 x 15 s
    .venv/bin/python -m reliability.slowloris --slow 1000 --seconds 30

Starts ``qlevents serve`` (defaults: headers must arrive within 10 s, a body within 30 s),
then measures normal clients (``wrk``, 16 connections, single-event POSTs) twice, side by
side in one run: alone, and while ``--slow`` connections trickle a request one header
byte a second (half of them) or send their headers and then trickle the body (the other
half), reconnecting whenever the server cuts them off.

Pass criteria (exit 1 otherwise): the normal clients' p99 with the slow connections is at
most 2x their p99 alone; every normal answer is a 200; the server cut slow connections off
(408) rather than letting them wait forever.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tests.support import RunningServer, free_port, view

LUA = Path(__file__).resolve().parent.parent / "bench" / "post_events.lua"


def run_wrk(
    server: RunningServer, body: Path, seconds: float, connections: int
) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(LUA),
         server.events_url, "--", str(body)],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("BENCH_RESULT "))
    result: dict[str, float] = json.loads(line.removeprefix("BENCH_RESULT "))
    return result


class SlowClients:
    """``count`` connections that never finish a request quickly, kept open on a thread."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.cut_off = 0  # connections the server closed on us
        self.timeouts_408 = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def __enter__(self) -> SlowClients:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks = [asyncio.create_task(self._one(i)) for i in range(self.count)]
        self._ready.set()
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, index: int) -> None:
        assert self._stop is not None
        head = b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nX-Slow: "
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            try:
                # Slow headers: a header value that never ends. Slow body: whole headers,
                # then the body a byte a second.
                writer.write(head + b"1\r\n\r\n" if index % 2 else head)
                await writer.drain()
                while not self._stop.is_set():
                    writer.write(b"a")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        data = await asyncio.wait_for(reader.read(65536), 1.0)
                        if not data:
                            break  # closed by the server
                        if data.startswith(b"HTTP/1.1 408"):
                            self.timeouts_408 += 1
                        break
            except OSError:
                pass
            finally:
                self.cut_off += 1
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=500, help="slow connections (default 500)")
    parser.add_argument("--seconds", type=int, default=15, help="each measurement (15 s)")
    parser.add_argument("--connections", type=int, default=16, help="normal clients (16)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("needs wrk: apt-get install -y wrk (or: make bench, which installs it)")
        return 2

    with tempfile.TemporaryDirectory(prefix="qlevents-slowloris-") as tmp:
        root = Path(tmp)
        server = RunningServer(root / "data", free_port(), [], root / "server.log").start()
        try:
            body = root / "body.json"
            body.write_text(json.dumps([view(server.client_key)]))
            run_wrk(server, body, 2, args.connections)  # warm-up
            alone = run_wrk(server, body, args.seconds, args.connections)
            with SlowClients(server.port, args.slow) as slow:
                run_wrk(server, body, 2, args.connections)  # let the slow ones settle in
                beside = run_wrk(server, body, args.seconds, args.connections)
                cut_off, answered_408 = slow.cut_off, slow.timeouts_408
        finally:
            server.stop()
            log = server.log()

    ratio = beside["p99_us"] / alone["p99_us"]
    print(f"normal clients alone:           {alone['ok'] / args.seconds:9,.0f} req/s"
          f"  p50 {alone['p50_us'] / 1000:6.2f} ms  p99 {alone['p99_us'] / 1000:6.2f} ms"
          f"  non-2xx {alone['non2xx']:.0f}")  # fmt: skip
    print(f"beside {args.slow} slow connections: {beside['ok'] / args.seconds:9,.0f} req/s"
          f"  p50 {beside['p50_us'] / 1000:6.2f} ms  p99 {beside['p99_us'] / 1000:6.2f} ms"
          f"  non-2xx {beside['non2xx']:.0f}")  # fmt: skip
    print(
        f"p99 ratio {ratio:.2f} (limit 2.0); slow connections cut off by the server:"
        f" {cut_off} ({answered_408} with a 408 answer); 408 log lines: {log.count(' 408 ')}"
    )
    failures = []
    if ratio > 2.0:
        failures.append(f"p99 grew {ratio:.2f}x")
    if alone["non2xx"] or beside["non2xx"] or beside["ok"] == 0:
        failures.append("normal clients got non-200 answers")
    if cut_off == 0:
        failures.append("no slow connection was cut off")
    print("FAIL: " + "; ".join(failures) if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
