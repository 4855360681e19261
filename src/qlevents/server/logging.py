"""Logging set-up for ``qlevents serve`` (given to uvicorn, so every worker has it), and the
log file of ``--log-file``.

Every line of the service goes to standard error: uvicorn's and qlevents' loggers, the
access log, the store's writer processes, tracebacks. By default that is the terminal or,
under systemd, the journal. With a log file, standard error becomes a pipe that every process
started afterwards inherits (workers, their store writers), and a thread of the server's
first process copies it to the file. Reopening the file (on SIGHUP, after logrotate renamed
it) is then one ``dup2`` in one process: no worker and no writer has to be told, and a slow
disk holds up that thread, never an event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
from pathlib import Path
from typing import Any, Final

#: How much of the log the pipe holds while the file is slow to take it (Linux's default
#: ceiling for an unprivileged process; the kernel's default is 64 KiB).
PIPE_BYTES: Final = 1024 * 1024
#: The copier's reads (more would make each read allocate, and give back, a large buffer).
READ_BYTES: Final = 64 * 1024
#: How long the server's exit waits for the last lines of the other processes.
DRAIN_SECONDS: Final = 5.0


def log_config(level: str = "info") -> dict[str, Any]:
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "line": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "qlevents": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
    }


class LogFile:
    """Standard error, of this process and of those it starts, copied to the file ``path``
    (appended to; created, mode 0640, if missing). Raises OSError if it cannot be opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = self._open()
        read_end, write_end = os.pipe()
        with contextlib.suppress(OSError):  # a smaller pipe: writers wait sooner for a slow disk
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        sys.stderr.flush()
        self._stderr = os.dup(2)  # given back by close()
        os.dup2(write_end, 2)  # inheritable: the workers and their writers log here too
        os.close(write_end)
        self._read_end = read_end
        self._copier = threading.Thread(target=self._copy, name="qlevents-log-file", daemon=True)
        self._copier.start()

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        return os.open(self.path, flags, 0o640)

    def reopen(self) -> None:
        """Write the next lines to a file opened anew at ``path`` (logrotate renamed the old
        one). If it cannot be opened, say so in the old file and keep writing there."""
        try:
            fresh = self._open()
        except OSError as exc:
            os.write(2, f"cannot reopen the log file {self.path}: {exc}; still writing to the"
                        " file it was\n".encode())  # fmt: skip
            return
        os.dup2(fresh, self._file)  # the copier's next write goes to the new file
        os.close(fresh)

    def close(self) -> None:
        """Give this process its standard error back, and copy the lines still on their way
        (other processes' last lines: for up to ``DRAIN_SECONDS``)."""
        sys.stderr.flush()
        os.dup2(self._stderr, 2)
        os.close(self._stderr)
        self._copier.join(DRAIN_SECONDS)

    def _copy(self) -> None:
        while chunk := os.read(self._read_end, READ_BYTES):  # b"": every writer has gone
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._file, view) :]
            except OSError:
                pass  # a full disk drops log lines; never the requests that log them
        os.close(self._read_end)
        os.close(self._file)
