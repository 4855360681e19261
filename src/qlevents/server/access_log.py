"""The access log: one line per request, written in batches.

A line is one f-string appended to a list, and the lines of one event-loop iteration go out
in one ``write`` at the end of it: :mod:`logging` costs a LogRecord, a formatter and a write
per line (measured: docs/architecture.md, "Costs on the request path"). The format is the
one the ``logging`` set-up of ``qlevents serve`` gives every other line, so the stream reads
as one log.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time


class AccessLog:
    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stderr.fileno() if fd is None else fd
        self._lines: list[str] = []
        self._flush_scheduled = False
        self._second = -1
        self._stamp = ""

    def line(
        self,
        client: tuple[str, int] | None,
        method: str,
        path: str,
        status: int,
        processed: int,
        failed: int,
        seconds: float,
    ) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        peer = f"{client[0]}:{client[1]}" if client else "-"
        self._lines.append(
            f"{self._stamp},{int((now - second) * 1000):03d} INFO qlevents.access {peer}"
            f' "{method} {path}" {status} processed={processed} failed={failed}'
            f" {seconds * 1000:.2f}ms\n"
        )
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._lines:
            return
        data = memoryview("".join(self._lines).encode("utf-8", "backslashreplace"))
        self._lines.clear()
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass  # a closed or broken log stream must not fail requests
