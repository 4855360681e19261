"""Signal: a thread or a task waiting on the queue never misses the wake-up it waits for."""

from __future__ import annotations

import asyncio
import math
import threading

from qlevents.client._signal import Signal


def waits_out(wait: threading.Thread) -> bool:
    """Start ``wait`` and say whether it returned (a generous guard, not a timing check)."""
    wait.start()
    wait.join(30)
    return not wait.is_alive()


class TestThreads:
    def test_a_fire_between_mark_and_wait_is_not_lost(self) -> None:
        """Fired after the waiter looked and before it waited: the wait returns at once."""
        signal = Signal()
        mark = signal.mark()
        signal.fire()
        assert waits_out(threading.Thread(target=signal.wait, args=(mark, math.inf)))

    def test_a_fire_wakes_every_blocked_thread(self) -> None:
        """Two threads waiting without a timeout both wake on one fire."""
        signal = Signal()
        mark = signal.mark()
        waiting = [threading.Thread(target=signal.wait, args=(mark, math.inf)) for _ in range(2)]
        for thread in waiting:
            thread.start()
        signal.fire()
        for thread in waiting:
            thread.join(30)
        assert not any(thread.is_alive() for thread in waiting)

    def test_a_wait_ends_at_its_timeout(self) -> None:
        """Nothing fires: the wait returns once its timeout has passed."""
        signal = Signal()
        assert waits_out(threading.Thread(target=signal.wait, args=(signal.mark(), 0.01)))


class TestTasks:
    def test_a_fire_from_another_thread_wakes_a_task(self) -> None:
        """The loop is woken thread-safely: a task awaiting with no timeout returns."""

        async def main() -> None:
            signal = Signal()
            mark = signal.mark()
            threading.Thread(target=signal.fire).start()
            await asyncio.wait_for(signal.wait_async(mark, math.inf), 30)

        asyncio.run(main())

    def test_a_fire_before_the_await_is_not_lost(self) -> None:
        """Fired between mark and await: the await returns at once."""

        async def main() -> None:
            signal = Signal()
            mark = signal.mark()
            signal.fire()
            await asyncio.wait_for(signal.wait_async(mark, math.inf), 30)

        asyncio.run(main())

    def test_a_fire_after_the_loop_closed_is_harmless(self) -> None:
        """A waiter left on a loop that was closed under it does not break fire()."""
        signal = Signal()
        loop = asyncio.new_event_loop()
        signal._futures.add(loop.create_future())  # a task's wait, its loop gone
        loop.close()
        signal.fire()
        assert signal.mark() == 1
