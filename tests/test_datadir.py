"""The data directory: one server at a time; readers never create one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlevents.datadir import DataDirError, ServeLock, require


def test_a_missing_data_directory_is_an_error(tmp_path: Path) -> None:
    """A mistyped --data-dir says there is none, and creates nothing."""
    with pytest.raises(DataDirError, match=r"no data directory at .*typo"):
        require(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_a_second_server_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    """While one process holds the lock, another cannot take it; the error names the pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path;"
         "from qlevents.datadir import ServeLock; ServeLock(Path(sys.argv[1])).acquire();"
         "print('held', flush=True); sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(DataDirError, match=f"pid {holder.pid}"):
            ServeLock(tmp_path).acquire()
    finally:
        holder.communicate(b"")
    with ServeLock(tmp_path):  # the holder exited: the lock is free again
        assert (tmp_path / "serve.lock").read_text() == f"{os.getpid()}\n"
