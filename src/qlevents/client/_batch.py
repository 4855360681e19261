"""What a sender sends, and the protocol of where it takes it from (the queue or the spool).

A source decides without waiting: ``poll()`` hands out the next batch, or says how long
until one may be due, or that the sender should stop. Its two signals say when to look
again; the thread and the task wait on them each in its own way (``_signal.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from qlevents.client._build import Encoded
from qlevents.client._outcome import Outcome, Tally
from qlevents.client._signal import Signal


@dataclass(slots=True)
class Batch:
    """Events for one request. Groups (events given together) are never split."""

    events: list[Encoded]
    groups: list[int]
    #: Chosen before the first send and kept: a batch sent again carries the same key.
    key: str | None = None
    #: Memory queue: the sequence number of the last event, for flush().
    last_seq: int = 0
    #: Spool: the row id of the batch.
    spool_id: int | None = None
    #: Counted as sent already (a batch resumed after its task was cancelled is not again).
    counted: bool = False


#: What a flush waits for: a position in the source, and how many were lost when it began.
FlushMark = tuple[int, int]


class Source(Protocol):
    """Where a sender takes batches from: the memory queue or the spool."""

    #: Fired when a batch may have become due (a put, a flush, a stop).
    ready: Signal
    #: Fired when a batch is settled, and on abort.
    settled: Signal
    #: What became of this process's events that the source knows of by itself (a full
    #: queue or spool, events dropped at close); ``outcomes()`` adds the settled batches.
    tally: Tally

    @property
    def recheck(self) -> float:
        """The longest a flush waits before it checks again (another process may send)."""

    @property
    def aborting(self) -> bool:
        """The client is closing and its time is up: stop at once."""

    def poll(self) -> Batch | float | None:
        """The next batch if one is due; else seconds until one may be (inf: until
        ``ready`` fires); None when the sender should stop."""

    def settle(self, batch: Batch, outcome: Outcome) -> None:
        """The batch's fate is known (``outcome.unanswered``: given up or aborted)."""

    def outcomes(self) -> dict[str, int]:
        """This process's events so far by the code of their outcome (``_outcome.py``)."""

    def resume(self, batch: Batch) -> None:
        """A batch taken but not settled (its sender was cancelled): hand it out again."""

    def begin_flush(self) -> FlushMark:
        """A flush starts: close batches at once until ``end_flush()``."""

    def flush_state(self, mark: FlushMark) -> tuple[bool, bool, int]:
        """(finished, all delivered, how many pending) for what was queued at ``mark``."""

    def end_flush(self) -> None:
        """The flush that began is over."""

    def stop(self, abort: bool = False) -> None:
        """Make ``poll()`` return None once drained (or at once, with ``abort``)."""

    def pending(self) -> int:
        """Events queued and not settled yet."""
