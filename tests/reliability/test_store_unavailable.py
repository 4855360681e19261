"""The store cannot take writes (the disk is full, another process holds the write lock):
answers are 503 with Retry-After and nothing of the request is stored, no answer says
processed for an event that is not stored, and the server recovers by itself."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import RunningServer, free_port, view

BIG_BATCH = 1000  # ~600 KB of events: far more than the WAL holds free when the disk fills


def batch(key: str, tag: str, count: int) -> list[dict[str, Any]]:
    """``count`` valid events, each with a unique product id ``tag-i``, ~600 bytes apiece."""
    return [
        view(key, product_id=f"{tag}-{i}", vid="v" * 256, tags=["t" * 100]) for i in range(count)
    ]


def stored_product_ids(server: RunningServer) -> set[str]:
    return {event["product_id"] for event in server.stored()}


def assert_store_unavailable(answer: httpx.Response) -> None:
    """A 503 in the contract's shape, store_unavailable, with a Retry-After in seconds."""
    assert answer.status_code == 503, answer.text[:300]
    assert int(answer.headers["retry-after"]) >= 1
    body = answer.json()
    assert body["processed"] == [] and body["failed"] == []
    [error] = body["errors"]
    assert error["index"] is None and error["code"] == "store_unavailable"


def integrity(server: RunningServer) -> str:
    conn = sqlite3.connect(f"file:{server.data_dir / 'events.sqlite3'}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


# --- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for the test (needs root: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("filling a disk needs a small tmpfs, and mounting one needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def disk_server(small_disk: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """A server whose data directory is on the small disk (stopped before it is unmounted)."""
    server = RunningServer(small_disk / "data", free_port(), [], tmp_path / "server.log")
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop(signal.SIGKILL)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no space left; returns it (delete it to free space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        size = 1 << 16
        while size:  # halve the write on each ENOSPC: what is left ends up taken too
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return filler


class TestDiskFull:
    def test_503_with_nothing_stored_then_recovers_when_space_returns(
        self, disk_server: RunningServer, small_disk: Path
    ) -> None:
        """While the disk is full: 503 + Retry-After, nothing of the request stored, every
        200 stored; once space returns the same process takes writes again."""
        server = disk_server
        key = server.client_key
        assert server.post(batch(key, "before", 10)).status_code == 200
        pid = server.process.pid if server.process else None
        filler = fill(small_disk)

        answers: dict[str, httpx.Response] = {}
        for round_ in range(3):
            for size in (BIG_BATCH, 1, 50):
                tag = f"full{round_}-{size}"
                answers[tag] = server.post(batch(key, tag, size), timeout=30)
        assert {a.status_code for a in answers.values()} <= {200, 503}
        assert_store_unavailable(answers[f"full0-{BIG_BATCH}"])
        stored = stored_product_ids(server)
        for tag, answer in answers.items():
            size = int(tag.rsplit("-", 1)[1])
            sent = {f"{tag}-{i}" for i in range(size)}
            if answer.status_code == 200:
                assert sent <= stored, f"{tag}: answered processed but not stored"
            else:
                assert_store_unavailable(answer)
                assert not sent & stored, f"{tag}: answered 503 but partly stored"

        filler.unlink()
        answer = server.post(batch(key, "after", BIG_BATCH), timeout=30)
        assert answer.status_code == 200
        assert len(answer.json()["processed"]) == BIG_BATCH
        assert {f"after-{i}" for i in range(BIG_BATCH)} <= stored_product_ids(server)
        assert server.get("/readyz").status_code == 200
        assert server.process is not None and server.process.pid == pid
        assert integrity(server) == "ok"

    def test_readyz_is_503_while_the_disk_is_full(
        self, disk_server: RunningServer, small_disk: Path
    ) -> None:
        """Readiness says 503 while writes fail for space, and 200 again once they succeed."""
        key = disk_server.client_key
        filler = fill(small_disk)
        try:
            assert_store_unavailable(disk_server.post(batch(key, "full", BIG_BATCH), timeout=30))
            assert disk_server.get("/readyz", timeout=30).status_code == 503
        finally:
            filler.unlink()
        assert disk_server.post(batch(key, "freed", BIG_BATCH), timeout=30).status_code == 200
        assert disk_server.get("/readyz", timeout=30).status_code == 200


# --- a locked database -----------------------------------------------------------------------


class TestDatabaseLocked:
    def test_503_while_another_process_holds_the_lock_then_recovers(
        self, server: RunningServer
    ) -> None:
        """Another process holds BEGIN IMMEDIATE past the 5 s busy timeout: POST /events and
        /readyz answer 503 (nothing stored); after it lets go both answer 200, no restart."""
        key = server.client_key
        pid = server.process.pid if server.process else None
        holder = sqlite3.connect(server.data_dir / "events.sqlite3", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with ThreadPoolExecutor(2) as pool:
                posted = pool.submit(server.post, batch(key, "locked", 20), timeout=30)
                ready = pool.submit(server.get, "/readyz", timeout=30)
                # Both wait on the store's one writer thread: ~5 s each, then give up.
                done, _ = wait([posted, ready], timeout=25)
                assert len(done) == 2
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert_store_unavailable(posted.result())
        assert ready.result().status_code == 503
        assert ready.result().json()["status"] == "unavailable"
        assert not any(p.startswith("locked-") for p in stored_product_ids(server))

        assert server.get("/readyz").json() == {"status": "ready"}
        answer = server.post(batch(key, "unlocked", 20))
        assert answer.status_code == 200 and len(answer.json()["processed"]) == 20
        assert {f"unlocked-{i}" for i in range(20)} <= stored_product_ids(server)
        assert server.process is not None and server.process.pid == pid

    def test_requests_waiting_on_a_short_lock_are_stored(self, server: RunningServer) -> None:
        """A lock held for less than the busy timeout only delays the answer: 200, stored."""
        key = server.client_key
        holder = sqlite3.connect(server.data_dir / "events.sqlite3", isolation_level=None)
        with ThreadPoolExecutor(1) as pool:
            holder.execute("BEGIN IMMEDIATE")
            try:
                posted = pool.submit(server.post, batch(key, "short", 5), timeout=30)
                done, _ = wait([posted], timeout=1)
                assert not done  # it is waiting on the lock
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            answer = posted.result()
        assert answer.status_code == 200
        assert [e["product_id"] for e in answer.json()["processed"]] == [
            f"short-{i}" for i in range(5)
        ]
        assert {f"short-{i}" for i in range(5)} <= stored_product_ids(server)
