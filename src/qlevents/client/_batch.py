"""What the worker sends: batches of groups, taken from the memory queue or the spool."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from qlevents.client._build import Encoded


@dataclass(slots=True)
class Batch:
    """Events for one request. Groups (events given together) are never split."""

    events: list[Encoded]
    groups: list[int]
    key: str | None = None
    #: Memory queue: the sequence number of the last event, for flush().
    last_seq: int = 0
    #: Spool: the row id of the batch.
    spool_id: int | None = None


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


class Source(Protocol):
    """Where the worker takes batches from: the memory queue or the spool."""

    def take(self) -> Batch | None:
        """The next batch once it is due (count, bytes, interval, flush); None to stop."""

    def settle(self, batch: Batch, delivered: bool) -> None:
        """The batch's fate is known (``delivered``: answered, else given up or aborted)."""

    def sleep(self, seconds: float) -> bool:
        """Wait between retries; False when the client is aborting."""

    def flush(self, timeout: float | None) -> tuple[bool, int]:
        """Wait until what is queued now is settled; (all delivered, how many pending)."""

    def stop(self, abort: bool = False) -> None:
        """Ask ``take()`` to return None once drained (or at once, with ``abort``)."""

    def pending(self) -> int:
        """Events queued and not settled yet."""


class EventQueue:
    """The bounded in-memory queue: ``put_nowait`` never blocks, it refuses when full."""

    def __init__(self, maxsize: int, max_events: int, max_bytes: int, interval: float) -> None:
        self.maxsize = maxsize
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.interval = interval
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the worker waits on it
        self._settled = threading.Condition(self._lock)  # flush() waits on it
        self._groups: deque[QueuedGroup] = deque()
        self._size = 0
        self._bytes = 0
        self._oldest = 0.0
        self._seq = 0  # events ever queued
        self._done_seq = 0  # events whose fate is known, in queue order
        self._lost = 0  # events given up (not delivered)
        self._urgent = 0  # flushers waiting: close batches at once
        self._stopping = False
        self._aborting = False

    def put_nowait(self, group: tuple[Encoded, ...]) -> bool:
        """Queue a group of events; False (and nothing queued) when there is no room."""
        count = len(group)
        size = len(group[0]) if count == 1 else sum(map(len, group))
        with self._lock:
            if self._size + count > self.maxsize:
                return False
            if not self._size:
                self._oldest = time.monotonic()
            self._size += count
            self._bytes += size
            self._seq += count
            self._groups.append((group, size, self._seq))
            if (
                self._size == count
                or self._size >= self.max_events
                or self._bytes >= self.max_bytes
            ):
                self._ready.notify()
        return True

    def take(self) -> Batch | None:
        with self._lock:
            while True:
                if self._aborting:
                    return None
                if self._groups:
                    due = self._oldest + self.interval - time.monotonic()
                    if (
                        due <= 0
                        or self._urgent
                        or self._stopping
                        or self._size >= self.max_events
                        or self._bytes >= self.max_bytes
                    ):
                        break
                    self._ready.wait(due)
                elif self._stopping:
                    return None
                else:
                    self._ready.wait()
            events, groups, payload, last = take_groups(
                self._groups, self.max_events, self.max_bytes
            )
            self._size -= len(events)
            self._bytes -= payload
            if self._groups:
                self._oldest = time.monotonic()
            return Batch(events, groups, last_seq=last)

    def settle(self, batch: Batch, delivered: bool) -> None:
        with self._lock:
            self._done_seq = max(self._done_seq, batch.last_seq)
            if not delivered:
                self._lost += len(batch.events)
            self._settled.notify_all()

    def sleep(self, seconds: float) -> bool:
        with self._lock:
            if not self._aborting:
                self._settled.wait(seconds)  # woken early by abort
            return not self._aborting

    def flush(self, timeout: float | None) -> tuple[bool, int]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._seq
            lost = self._lost
            self._urgent += 1
            self._ready.notify()
            try:
                while self._done_seq < target and not self._aborting:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._settled.wait(left)
            finally:
                self._urgent -= 1
            pending = target - self._done_seq
            return pending <= 0 and self._lost == lost, max(0, pending)

    def stop(self, abort: bool = False) -> None:
        with self._lock:
            self._stopping = True
            self._aborting = self._aborting or abort
            self._ready.notify_all()
            self._settled.notify_all()

    def pending(self) -> int:
        with self._lock:
            return self._seq - self._done_seq

    @property
    def enqueued(self) -> int:
        """Events ever taken."""
        return self._seq

    def drain(self) -> list[Encoded]:
        """Take every event still queued (the worker is gone); they will not be sent."""
        with self._lock:
            events = [event for group, _, _ in self._groups for event in group]
            self._groups.clear()
            self._size = self._bytes = 0
            self._done_seq = self._seq
            self._settled.notify_all()
            return events
