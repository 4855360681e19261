"""The data directory: one server at a time, and no directory made by a command that reads.

``qlevents serve`` holds an exclusive lock on ``<data-dir>/serve.lock`` for as long as it
runs (its worker processes share the supervisor's), so a second server on the same
directory is refused at start instead of sharing the files with the first. Commands that
only read (``accounts list``, ``events export``, ...) call :func:`require` first, so a
mistyped ``--data-dir`` is an error instead of a new, empty directory.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from qlevents._exceptions import QleventsError

LOCK_FILE: Final = "serve.lock"


class DataDirError(QleventsError):
    """The data directory is missing, or in use by another server."""


def require(path: Path) -> Path:
    """``path`` if it is an existing data directory; otherwise an error that says so."""
    if not path.is_dir():
        raise DataDirError(f"there is no data directory at {path}; is --data-dir right?")
    return path


class ServeLock:
    """The exclusive lock of a serving process on its data directory (released on exit)."""

    def __init__(self, path: Path) -> None:
        self.path = path / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirError(
                f"another qlevents serve (pid {holder}) is using the data directory"
                f" {self.path.parent}; stop it first, or give this one another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> ServeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
