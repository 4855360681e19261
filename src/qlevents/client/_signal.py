"""``Signal``: how a sender, a flush or a close waits for the queue, from a thread or a task.

The queue and the spool decide without waiting (``poll()`` says "a batch", "wait this long"
or "stop"); whoever waits takes a ``mark()`` first, checks, then waits from that mark. A
fire in between is never lost: the wait returns at once. ``Client``'s thread waits with
``wait()``, ``AsyncClient``'s task with ``wait_async()``; that is the whole difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading


class Signal:
    """Wakes every waiter, blocked in a thread or awaiting in a task, each time it fires."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._fired = 0
        self._futures: set[asyncio.Future[None]] = set()

    def mark(self) -> int:
        """Take before checking the state waited for; then wait from this mark."""
        return self._fired

    def fire(self) -> None:
        """Wake every waiter; safe from any thread (a task's loop is woken thread-safely)."""
        with self._cond:
            self._fired += 1
            self._cond.notify_all()
            futures = list(self._futures) if self._futures else []
        for future in futures:
            _wake(future)

    def wait(self, mark: int, timeout: float) -> None:
        """Block until fired since ``mark``, or ``timeout`` seconds (inf: no limit)."""
        with self._cond:
            if self._fired == mark and timeout > 0:
                self._cond.wait(None if timeout == math.inf else timeout)

    async def wait_async(self, mark: int, timeout: float) -> None:
        """``wait()`` for a task on the running loop."""
        if self._fired != mark or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._fired != mark:
                return
            self._futures.add(future)
        timer = None if timeout == math.inf else loop.call_later(timeout, _resolve, future)
        try:
            await future
        finally:
            with self._cond:
                self._futures.discard(future)
            if timer is not None:
                timer.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wake(future: asyncio.Future[None]) -> None:
    loop = future.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        _resolve(future)
        return
    with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_resolve, future)
