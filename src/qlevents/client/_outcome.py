"""What became of the events handed to a client: their tally, and what ``flush()`` returns.

Every event taken by ``view()`` / ``conversion()`` / ``enqueue()`` ends one of three ways:

- **stored**: the server answered it ``processed``;
- **refused**: the server answered and did not store it (it is in the answer's ``failed``
  list, or the whole request was refused: a 404 for a wrong URL, a 401...);
- **dropped**: no answer was had for it: the queue or the spool was full, the retry budget
  ran out, or the client closed first.

The source (queue or spool) tallies each event under a code: ``stored``, the server's error
code (``unknown_client_key``, ``http_404``...), or a client-side one (``queue_full``,
``spool_full``, ``not_delivered``). ``flush()`` reports the difference between two tallies:
what became of the events since the previous ``flush()`` returned.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

#: The code of a stored event.
STORED: Final = "stored"
#: Client-side codes: the event was dropped, never answered for.
NOT_DELIVERED: Final = "not_delivered"
QUEUE_FULL: Final = "queue_full"
SPOOL_FULL: Final = "spool_full"
DROPPED_CODES: Final = frozenset({NOT_DELIVERED, QUEUE_FULL, SPOOL_FULL})


@dataclass(slots=True)
class Outcome:
    """What became of a batch's events once its delivery is over."""

    #: Events the server stored.
    stored: int = 0
    #: The code of each event that was not stored, by its index in the batch.
    not_stored: dict[int, str] = field(default_factory=dict)
    #: Some events got no answer (the client closed, or the retry budget ran out). A spool
    #: keeps such a batch whole for the next sender; the queue counts those events dropped.
    unanswered: bool = False


class Tally:
    """Events by the code of their outcome, safe to bump from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, code: str, count: int = 1) -> None:
        if count:
            with self._lock:
                self._counts[code] += count

    def add_outcome(self, outcome: Outcome) -> None:
        with self._lock:
            if outcome.stored:
                self._counts[STORED] += outcome.stored
            self._counts.update(outcome.not_stored.values())

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What ``flush()`` found: what became of the events handed to the client since the
    previous ``flush()`` returned (from any thread), and how many of those queued before
    this flush began are still waiting. True only when every one of them was stored."""

    stored: int
    #: Answered, not stored: the server's ``failed`` events and events of refused requests.
    refused: int
    #: Never answered for: a full queue or spool, a retry budget spent, a client closed.
    dropped: int
    #: Queued before the flush began, still waiting for an answer when it gave up.
    pending: int
    #: The events not stored, by why: the server's error code of each refused event
    #: (``unknown_client_key``, ``http_404``...), or ``queue_full``, ``spool_full``,
    #: ``not_delivered`` for dropped ones.
    reasons: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every event was stored and none is pending."""
        return not (self.refused or self.dropped or self.pending)

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def between(
        cls, before: Mapping[str, int], after: Mapping[str, int], pending: int
    ) -> FlushResult:
        """The result for the events tallied between ``before`` and ``after``."""
        delta = {
            code: count - before.get(code, 0)
            for code, count in after.items()
            if count > before.get(code, 0)
        }
        stored = delta.pop(STORED, 0)
        dropped = sum(count for code, count in delta.items() if code in DROPPED_CODES)
        refused = sum(delta.values()) - dropped
        reasons = dict(sorted(delta.items(), key=lambda item: (-item[1], item[0])))
        return cls(stored, refused, dropped, pending, reasons)

    def describe(self) -> str:
        """One line: ``3 stored, 2 refused (unknown_client_key: 2), 0 dropped, 0 pending``."""
        why = ", ".join(f"{code}: {count}" for code, count in self.reasons.items())
        return (
            f"{self.stored} stored, {self.refused} refused, {self.dropped} dropped,"
            f" {self.pending} pending" + (f" ({why})" if why else "")
        )
