"""The access log's writes: into a pipe shared by several writers, lines stay whole."""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import threading

from qlevents.server.access_log import AccessLog


def write_batches(fd: int, writer: int, batches: int, lines: int) -> None:
    """``batches`` flushes of ``lines`` access lines each, from one AccessLog on ``fd``."""
    log = AccessLog(fd)

    async def run() -> None:
        for batch in range(batches):
            for line in range(lines):
                path = f"/w{writer}/b{batch}/l{line}/" + "x" * 60
                log.line(("127.0.0.1", 1000 + writer), "POST", path, 200, 1, 0, 0.001)
            await asyncio.sleep(0)  # the batch's flush runs here, in one go

    asyncio.run(run())


class TestPipe:
    def test_batches_of_two_writers_never_cut_a_line(self) -> None:
        """Batches far larger than the pipe, from two writers at once: every line read back is
        whole (the kernel keeps writes of up to PIPE_BUF bytes whole; larger ones interleave)."""
        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, select.PIPE_BUF)  # full at once: writers block
        received = bytearray()

        def read() -> None:
            while chunk := os.read(read_end, 512):
                received.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        writers = [
            threading.Thread(target=write_batches, args=(write_end, writer, 20, 100))
            for writer in range(2)
        ]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        os.close(write_end)
        reader.join()
        os.close(read_end)
        lines = received.decode().splitlines()
        assert len(lines) == 2 * 20 * 100
        for line in lines:
            assert line.count("qlevents.access") == 1 and line.endswith("ms"), line
            assert line.count('"POST /w') == 1 and line.count(" 200 processed=1 ") == 1, line
