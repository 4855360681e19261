"""What each page shows, assembled from the account book and the activity ledger.

Plain functions (they query SQLite): the handlers run them in a thread, off the event loop.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Final

from qlevents.accounts import DISABLED, Account, PreviousKey, mask_key
from qlevents.error_codes import ErrorCode, describe
from qlevents.server.activity import ActivityLedger, LiveEvent, Totals

#: The overview's ranges: (seconds, chart step in minutes).
RANGES: Final = {"1h": (3600, 1), "24h": (86400, 15), "7d": (7 * 86400, 120)}
#: The checklist's thresholds.
RECENT_EVENT_SECONDS: Final = 3600
ERROR_RATE_LIMIT: Final = 0.05
DAY: Final = 86400.0


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    title: str
    detail: str
    #: Where to go when it fails: (the link's text, the account's page).
    then: tuple[str, str] | None = None


def counted(n: int, noun: str) -> str:
    """``1 event``, ``2 events``, ``1,200 events``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class CodeRow:
    entry: ErrorCode
    count: int
    previous: int
    last_seen: float | None

    @property
    def change(self) -> str:
        if not self.previous:
            return "new" if self.count else "-"
        delta = (self.count - self.previous) / self.previous
        return f"{delta:+.0%}"


def sdk_lines(key: str, endpoint: str) -> str:
    return f'from qlevents import Client\nqlevents = Client("{key}", endpoint="{endpoint}")'


def curl_examples(key: str, endpoint: str) -> tuple[str, str]:
    """The spec's two requests (a product page's view; a payment page's two conversions)."""
    view = (
        f"curl -XPOST {endpoint} -d '[{{\n"
        f'  "client_key": "{key}",\n'
        '  "price": 123.41,\n  "product_id": "123-AA-X23",\n  "event": "view",\n'
        '  "permalink": "https://yourstore.com/123-AA-X23/",\n  "vid": "DASDAS-#CCCC-NA",\n'
        '  "tags": ["user:new"],\n  "channels": ["online"]\n}]\''
    )
    conversions = (
        f"curl -XPOST {endpoint} -d '[{{\n"
        f'  "client_key": "{key}",\n'
        '  "price": 123.41,\n  "product_id": "123-AA-X23",\n  "event": "conversion",\n'
        '  "vid": "DASDAS-#CCCC-NA",\n  "tags": ["user:new"],\n  "channels": ["online"]\n},\n{\n'
        f'  "client_key": "{key}",\n'
        '  "price": 60,\n  "product_id": "455DD-AA-X23",\n  "event": "conversion",\n'
        '  "vid": "DASDAS-#CCCC-NA",\n  "tags": ["user:new"],\n  "channels": ["online"],\n'
        '  "units": 3\n}]\''
    )
    return view, conversions


def sample_event(key: str) -> str:
    """A valid view event for the account, for the Validate page's test button."""
    return json.dumps(
        [{"client_key": key, "event": "view", "price": 123.41, "product_id": "123-AA-X23",
          "permalink": "https://yourstore.com/123-AA-X23/"}],
        indent=2,
    )  # fmt: skip


def keys_view(
    account: Account, previous: list[PreviousKey], uses: dict[str, float], now: float
) -> list[dict[str, Any]]:
    """The account's keys for the Settings page: current first, then the replaced ones."""
    current_since = previous[0].replaced_at if previous else None
    rows: list[dict[str, Any]] = [
        {"masked": mask_key(account.client_key), "state": "current", "since": current_since,
         "expires_at": None, "last_used": uses.get(account.client_key)}
    ]  # fmt: skip
    for old in previous:
        rows.append(
            {"masked": mask_key(old.client_key),
             "state": "in grace period" if old.expires_at > now else "expired",
             "since": old.replaced_at, "expires_at": old.expires_at,
             "last_used": uses.get(old.client_key)}
        )  # fmt: skip
    return rows


def overview(
    ledger: ActivityLedger, account: Account, local: str, range_name: str, now: float
) -> dict[str, Any]:
    seconds, _ = RANGES[range_name]
    totals = ledger.totals(account.id, now - seconds)
    day = ledger.totals(account.id, now - DAY) if seconds != DAY else totals
    last = ledger.last_event(account.id)
    requests, mean_lag, worst_lag = ledger.lag(account.id, now - 3600)
    return {
        "totals": totals,
        "last_event": last,
        "lag": {"requests": requests, "mean": mean_lag, "worst": worst_lag},
        "checks": checklist(account, local, day, last, now),
        "range": range_name,
        "ranges": list(RANGES),
    }


def checklist(
    account: Account, local: str, day: Totals, last: float | None, now: float
) -> list[Check]:
    home = account.home(local)
    checks = [
        Check(
            account.status != DISABLED,
            "Client key valid",
            "The account is active and its key is accepted."
            if account.status != DISABLED
            else "The account is disabled: every event is refused (disabled_client_key).",
        )
    ]
    wrong = sum(day.wrong_endpoint.values())
    if account.endpoint is not None and account.endpoint != local:
        checks.append(Check(wrong == 0, "Events go to the right endpoint",
                            f"This account is homed on {home}. {counted(wrong, 'event')} came"
                            f" here instead in the last 24 h and {'was' if wrong == 1 else 'were'}"
                            " not stored.", ("See them on the Errors page", "errors")))  # fmt: skip
    else:
        checks.append(Check(True, "Events go to the right endpoint",
                            f"This account's endpoint is {home}."))  # fmt: skip
    recent = last is not None and now - last <= RECENT_EVENT_SECONDS
    checks.append(Check(recent, "A recent event",
                        "An event arrived in the last hour." if recent else
                        "No event in the last hour.",
                        ("Send one: copy a curl", "settings")))  # fmt: skip
    rate = day.failure_rate
    fine = rate is None or rate < ERROR_RATE_LIMIT
    checks.append(Check(fine, f"Error rate below {ERROR_RATE_LIMIT:.0%}",
                        "No events in the last 24 h." if rate is None else
                        f"{rate:.1%} of the last 24 h's events failed.",
                        ("See why, and the fix, on the Errors page", "errors")))  # fmt: skip
    return checks


def error_rows(ledger: ActivityLedger, account_id: str, now: float) -> list[CodeRow]:
    """Per error code in the last 24 h: count, the 24 h before, last seen; most first."""
    current = ledger.totals(account_id, now - DAY, now).by_code
    before = ledger.totals(account_id, now - 2 * DAY, now - DAY - 60).by_code
    seen = ledger.last_seen_by_code(account_id, now - DAY)
    rows = [
        CodeRow(describe(code), count, before.get(code, 0), seen.get(code))
        for code, count in current.items()
    ]
    return sorted(rows, key=lambda row: -row.count)


def pretty(body: str | bytes) -> str:
    """An event as sent, indented for reading (as sent if it is not JSON)."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body.decode("utf-8", "replace") if isinstance(body, bytes) else body


def live_rows(events: list[LiveEvent]) -> list[dict[str, Any]]:
    return [
        {"id": e.id, "at": e.at, "outcome": e.outcome, "code": e.code,
         "product_id": e.product_id, "body": pretty(e.body), "errors": e.errors,
         "event_id": _event_id(e.body)}
        for e in events
    ]  # fmt: skip


def _event_id(body: str) -> str:
    try:
        found = json.loads(body)
    except ValueError:
        return ""
    return str(found.get("id", "")) if isinstance(found, dict) else ""


def ago(at: float | None, now: float | None = None) -> str:
    if at is None:
        return "never"
    seconds = max(0, int((now or time.time()) - at))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def ago_minute(at: float | None, now: float | None = None) -> str:
    """Like ``ago`` for a time known to the minute (the ledger counts per minute)."""
    if at is not None and (now or time.time()) - at < 120:
        return "this minute"
    return ago(at, now)


def answer_summary(answer: bytes) -> dict[str, Any] | None:
    """How many events an answer of POST /events stored and failed, and its errors."""
    try:
        found = json.loads(answer)
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    return {"processed": len(found.get("processed", [])), "failed": len(found.get("failed", [])),
            "errors": found.get("errors", [])}  # fmt: skip


def utc(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
