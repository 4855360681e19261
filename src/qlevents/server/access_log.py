"""The access log: one line per request, written in batches.

A line is one f-string appended to a list, and the lines of one event-loop iteration go out
in one ``write`` at the end of it: :mod:`logging` costs a LogRecord, a formatter and a write
per line (measured: docs/architecture.md, "Costs on the request path"). The format is the
one the ``logging`` set-up of ``qlevents serve`` gives every other line, so the stream reads
as one log. Into a pipe (``--log-file``, a container's log), which several processes share
with ``--workers N``, a batch goes in writes of at most ``PIPE_BUF`` bytes cut at line ends:
the kernel keeps such a write whole, so lines of two workers never interleave.
"""

from __future__ import annotations

import asyncio
import os
import select
import stat
import sys
import time
from typing import Final

PIPE_BUF: Final = select.PIPE_BUF


class AccessLog:
    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stderr.fileno() if fd is None else fd
        try:
            self._piece = PIPE_BUF if stat.S_ISFIFO(os.fstat(self._fd).st_mode) else 0
        except OSError:
            self._piece = 0
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
        data = "".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines.clear()
        try:
            if not self._piece or len(data) <= self._piece:
                _write_all(self._fd, data)
                return
            start = 0
            while start < len(data):
                end = data.rfind(b"\n", start, start + self._piece) + 1
                if end <= start:  # one line longer than a piece: it cannot stay whole
                    end = start + self._piece
                _write_all(self._fd, data[start:end])
                start = end
        except OSError:
            pass  # a closed or broken log stream must not fail requests


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
