"""``FlushResult``: what became of the events between two flushes, true only if all stored."""

from __future__ import annotations

from qlevents import FlushResult


class TestFlushResult:
    def test_counts_are_the_difference_between_two_tallies(self) -> None:
        """Stored, refused (server codes) and dropped (client codes) since the last flush."""
        before = {"stored": 5, "unknown_client_key": 1}
        after = {"stored": 8, "unknown_client_key": 3, "http_404": 1, "queue_full": 4}
        result = FlushResult.between(before, after, pending=0)
        assert (result.stored, result.refused, result.dropped, result.pending) == (3, 3, 4, 0)
        assert result.reasons == {"queue_full": 4, "unknown_client_key": 2, "http_404": 1}

    def test_true_only_when_everything_was_stored(self) -> None:
        """Refused, dropped or pending events each make it false; stored ones alone true."""
        assert FlushResult.between({}, {"stored": 3}, pending=0)
        assert FlushResult(0, 0, 0, 0)  # nothing handed in: nothing failed
        assert not FlushResult.between({}, {"stored": 3, "unknown_client_key": 1}, pending=0)
        assert not FlushResult.between({}, {"not_delivered": 1}, pending=0)
        assert not FlushResult.between({}, {"stored": 3}, pending=2)

    def test_it_describes_itself_in_one_line(self) -> None:
        """describe(): the four counts and why events were not stored."""
        result = FlushResult.between({}, {"stored": 1, "unknown_client_key": 2}, pending=0)
        assert result.describe() == (
            "1 stored, 2 refused, 0 dropped, 0 pending (unknown_client_key: 2)"
        )
