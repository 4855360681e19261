"""What the pages say, before any browser: counts in words, and the checklist's next steps."""

from __future__ import annotations

import time

from qlevents.accounts import ACTIVE, Account
from qlevents.server.activity import Totals
from qlevents.ui.views import checklist, counted

LOCAL = "http://127.0.0.1:8080/events"


def _account(endpoint: str | None = None) -> Account:
    return Account("shop", "qlk_x", ACTIVE, endpoint, "2026-01-01T00:00:00Z", id="acc_1")


class TestWords:
    def test_one_event_is_singular_and_thousands_are_grouped(self) -> None:
        """1 event, 2 events, 1,200 events: no '1 events'."""
        assert [counted(n, "event") for n in (0, 1, 2, 1200)] == [
            "0 events", "1 event", "2 events", "1,200 events"
        ]  # fmt: skip

    def test_one_event_sent_to_the_wrong_endpoint_was_not_stored(self) -> None:
        """The checklist agrees with its count: '1 event came ... was not stored'."""
        day = Totals(0, 1, {"wrong_endpoint": 1}, {"https://eu.example/events": 1}, 0)
        checks = checklist(_account("https://eu.example/events"), LOCAL, day, None, time.time())
        detail = next(c.detail for c in checks if c.title == "Events go to the right endpoint")
        assert "1 event came here instead in the last 24 h and was not stored." in detail


class TestChecklist:
    def test_a_failed_check_says_where_to_look(self) -> None:
        """Too many failures point to the Errors page; no recent event to the settings' curl."""
        day = Totals(1, 3, {"invalid_type": 3}, {}, 0)
        checks = {c.title: c for c in checklist(_account(), LOCAL, day, None, time.time())}
        assert not checks["Error rate below 5%"].ok
        assert checks["Error rate below 5%"].then == (
            "See why, and the fix, on the Errors page",
            "errors",
        )
        assert checks["A recent event"].then is not None
        assert checks["A recent event"].then[1] == "settings"
