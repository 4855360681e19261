"""EventQueue's decisions, taken without waiting: when a batch is due, what a flush waits for."""

from __future__ import annotations

import math

from qlevents.client._batch import Batch
from qlevents.client._build import view
from qlevents.client._outcome import Outcome
from qlevents.client._queue import EventQueue


def event(n: int) -> tuple[bytes]:
    return (view("k", f"p{n}", 1, "https://s.example/"),)


def queue(max_events: int = 3, maxsize: int = 100, interval: float = 60.0) -> EventQueue:
    return EventQueue(maxsize, max_events, 1024 * 1024, interval)


def take(source: EventQueue) -> Batch:
    batch = source.poll()
    assert isinstance(batch, Batch)
    return batch


class TestBatches:
    def test_a_batch_is_due_once_full(self) -> None:
        """Below max_batch_events it waits for the interval; at it, the batch is handed out."""
        source = queue(max_events=3)
        source.put_nowait(event(0))
        source.put_nowait(event(1))
        wait = source.poll()
        assert isinstance(wait, float) and 0 < wait <= 60
        source.put_nowait(event(2))
        assert len(take(source).events) == 3

    def test_an_empty_queue_waits_until_woken(self) -> None:
        """Nothing queued: wait without a limit (a put wakes the sender)."""
        assert queue().poll() == math.inf

    def test_the_sender_is_woken_when_it_may_have_work(self) -> None:
        """The first event and the one that fills a batch wake it; events beyond, not."""
        source = queue(max_events=2)
        mark = source.ready.mark()
        source.put_nowait(event(0))
        assert source.ready.mark() != mark
        mark = source.ready.mark()
        source.put_nowait(event(1))
        assert source.ready.mark() != mark
        mark = source.ready.mark()
        source.put_nowait(event(2))
        assert source.ready.mark() == mark

    def test_a_full_queue_refuses(self) -> None:
        """A group that does not fit is refused whole."""
        source = queue(maxsize=2)
        assert not source.put_nowait(event(0) + event(1) + event(2))
        assert source.pending() == 0


class TestStopping:
    def test_stop_hands_out_what_is_left_then_says_stop(self) -> None:
        """After stop() whatever is queued is due at once; then poll() says None."""
        source = queue()
        source.put_nowait(event(0))
        source.stop()
        assert len(take(source).events) == 1
        assert source.poll() is None

    def test_abort_says_stop_at_once(self) -> None:
        """stop(abort=True): poll() says None even with events queued."""
        source = queue()
        source.put_nowait(event(0))
        source.stop(abort=True)
        assert source.poll() is None and source.aborting

    def test_a_resumed_batch_comes_back_first_and_whole(self) -> None:
        """A batch handed back (its task cancelled) is the next one out, the same object."""
        source = queue(max_events=2)
        for n in range(3):
            source.put_nowait(event(n))
        batch = take(source)
        batch.key = "qle-kept"
        source.resume(batch)
        again = take(source)
        assert again is batch and again.key == "qle-kept"

    def test_drain_takes_the_queued_and_the_resumed(self) -> None:
        """drain() returns every event not sent, resumed ones included; none is pending."""
        source = queue(max_events=1)
        source.put_nowait(event(0))
        source.put_nowait(event(1))
        source.resume(take(source))
        assert len(source.drain()) == 2
        assert source.pending() == 0


class TestFlush:
    def test_a_flush_waits_for_what_was_queued_when_it_began(self) -> None:
        """Events queued after the flush began are not waited for."""
        source = queue()
        source.put_nowait(event(0))
        mark = source.begin_flush()
        batch = take(source)  # a flush makes the batch due at once
        source.put_nowait(event(1))
        assert source.flush_state(mark) == (False, False, 1)
        source.settle(batch, Outcome(stored=1))
        assert source.flush_state(mark) == (True, True, 0)
        source.end_flush()
        assert source.outcomes() == {"stored": 1}

    def test_a_batch_given_up_makes_the_flush_fail(self) -> None:
        """Settled but not delivered: the flush finishes, reporting failure."""
        source = queue()
        source.put_nowait(event(0))
        mark = source.begin_flush()
        source.settle(take(source), Outcome(not_stored={0: "not_delivered"}, unanswered=True))
        assert source.flush_state(mark) == (True, False, 0)
        source.end_flush()
        assert source.outcomes() == {"not_delivered": 1}
