"""The bounded in-memory queue: groups of encoded events waiting to be sent in batches.

``put_nowait`` runs in the caller's thread (or on the event loop) and never blocks: it
refuses when full. Every other decision is made here too, without waiting: when a batch is
due (count, bytes, interval, a flush, a stop), which groups fit it, what a flush has left
to wait for. The thread and the task that send only wait on its signals.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Final

from qlevents.client._batch import Batch, FlushMark
from qlevents.client._build import Encoded
from qlevents.client._outcome import NOT_DELIVERED, QUEUE_FULL, Outcome, Tally
from qlevents.client._signal import Signal

#: A queued group: its encoded events, their encoded size, the sequence number of its last.
QueuedGroup = tuple[tuple[Encoded, ...], int, int]


def take_groups(
    queued: deque[QueuedGroup], max_events: int, max_bytes: int
) -> tuple[list[Encoded], list[int], int, int]:
    """Pop whole groups off ``queued`` while they fit one request.

    Returns the events, the size of each group taken, the bytes of their payloads, and the
    sequence number of the last event taken. The first group is always taken.
    """
    events: list[Encoded] = []
    groups: list[int] = []
    size = 2  # the array's brackets
    last = 0
    while queued:
        group, group_size, seq = queued[0]
        if events and (
            len(events) + len(group) > max_events or size + group_size + len(group) > max_bytes
        ):
            break
        queued.popleft()
        events.extend(group)
        groups.append(len(group))
        size += group_size + len(group)
        last = seq
    return events, groups, size - 2 - len(events), last


class EventQueue:
    """A :class:`~qlevents.client._batch.Source` held in memory, bounded by ``maxsize``."""

    recheck: Final = math.inf  # only this process's sender settles what it holds

    def __init__(self, maxsize: int, max_events: int, max_bytes: int, interval: float) -> None:
        self.maxsize = maxsize
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.interval = interval
        self.ready = Signal()
        self.settled = Signal()
        self.tally = Tally()
        self._lock = threading.Lock()
        self._groups: deque[QueuedGroup] = deque()
        self._resumed: deque[Batch] = deque()  # taken, not settled, to be sent again
        self._size = 0
        self._bytes = 0
        self._oldest = 0.0
        self._seq = 0  # events ever queued
        self._done_seq = 0  # events whose fate is known, in queue order
        self._lost = 0  # events given up (not delivered)
        self._urgent = 0  # flushes under way: close batches at once
        self._stopping = False
        self._aborting = False

    @property
    def aborting(self) -> bool:
        return self._aborting

    def put_nowait(self, group: tuple[Encoded, ...]) -> bool:
        """Queue a group of events; False (and nothing queued) when there is no room."""
        count = len(group)
        size = len(group[0]) if count == 1 else sum(map(len, group))
        with self._lock:
            if self._size + count > self.maxsize:
                self.tally.add(QUEUE_FULL, count)
                return False
            before, before_bytes = self._size, self._bytes
            if not before:
                self._oldest = time.monotonic()
            self._size += count
            self._bytes += size
            self._seq += count
            self._groups.append((group, size, self._seq))
            # Wake the sender when the queue was empty or a batch just filled up; above the
            # limits it takes the next batch without waiting, so waking it again costs only.
            wake = (
                not before
                or before < self.max_events <= self._size
                or before_bytes < self.max_bytes <= self._bytes
            )
        if wake:
            self.ready.fire()
        return True

    def poll(self) -> Batch | float | None:
        with self._lock:
            if self._aborting:
                return None
            if self._resumed:
                return self._resumed.popleft()
            if not self._groups:
                return None if self._stopping else math.inf
            due = self._oldest + self.interval - time.monotonic()
            if due > 0 and not (
                self._urgent
                or self._stopping
                or self._size >= self.max_events
                or self._bytes >= self.max_bytes
            ):
                return due
            events, groups, payload, last = take_groups(
                self._groups, self.max_events, self.max_bytes
            )
            self._size -= len(events)
            self._bytes -= payload
            if self._groups:
                self._oldest = time.monotonic()
            return Batch(events, groups, last_seq=last)

    def settle(self, batch: Batch, outcome: Outcome) -> None:
        with self._lock:
            self.tally.add_outcome(outcome)  # before the flush waiting for it can look
            self._done_seq = max(self._done_seq, batch.last_seq)
            if outcome.unanswered:
                self._lost += len(batch.events)
        self.settled.fire()

    def outcomes(self) -> dict[str, int]:
        return self.tally.snapshot()

    def resume(self, batch: Batch) -> None:
        with self._lock:
            self._resumed.append(batch)
        self.ready.fire()

    def begin_flush(self) -> FlushMark:
        with self._lock:
            self._urgent += 1
            mark = (self._seq, self._lost)
        self.ready.fire()
        return mark

    def flush_state(self, mark: FlushMark) -> tuple[bool, bool, int]:
        target, lost = mark
        with self._lock:
            pending = max(0, target - self._done_seq)
            return (
                not pending or self._aborting,
                not pending and self._lost == lost,
                pending,
            )

    def end_flush(self) -> None:
        with self._lock:
            self._urgent -= 1

    def stop(self, abort: bool = False) -> None:
        with self._lock:
            self._stopping = True
            self._aborting = self._aborting or abort
        self.ready.fire()
        self.settled.fire()

    def pending(self) -> int:
        with self._lock:
            return self._seq - self._done_seq

    @property
    def enqueued(self) -> int:
        """Events ever taken."""
        return self._seq

    def drain(self) -> list[Encoded]:
        """Take every event not sent (the sender is gone); they will not be sent."""
        with self._lock:
            events = [event for batch in self._resumed for event in batch.events]
            events.extend(event for group, _, _ in self._groups for event in group)
            self._resumed.clear()
            self._groups.clear()
            self._size = self._bytes = 0
            self._done_seq = self._seq
            self.tally.add(NOT_DELIVERED, len(events))
        self.settled.fire()
        return events
