"""Per-account rate limits: a token bucket of events per second for each client key.

A request whose accepted events would overdraw any of its accounts' buckets is refused as
a whole with 429 and a Retry-After saying when it would fit; nothing of it is stored. A full
bucket always admits one request, even one larger than the burst (the bucket then goes
into debt), so a large request is delayed, never refused forever.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from qlevents.accounts import Account


@dataclass(slots=True)
class TokenBucket:
    rate: float
    """Tokens (events) added per second."""
    burst: float
    """The most tokens the bucket holds."""
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, count: int) -> float:
        """Seconds until ``count`` events fit (0 if they fit now); call after refill."""
        needed = min(float(count), self.burst)
        return 0.0 if self.tokens >= needed else (needed - self.tokens) / self.rate


class RateLimiter:
    """The buckets of one worker process.

    ``default_rate`` / ``default_burst`` apply to accounts without limits of their own: a rate
    of 0 means unlimited, a burst of 0 one second's worth of the rate. With N worker
    processes each holds 1/N of every rate and burst, so that the whole installation admits
    the configured rate.
    """

    def __init__(
        self,
        default_rate: float,
        default_burst: float,
        share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_rate = default_rate
        self.default_burst = default_burst
        self.share = share
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self.active = False

    def update(self, accounts: Mapping[str, Account]) -> None:
        """Note whether any limit applies at all (the hot path skips the limiter if none)."""
        self.active = self.default_rate > 0 or any(
            a.rate_limit is not None and a.rate_limit > 0 for a in accounts.values()
        )

    def limits_of(self, account: Account) -> tuple[float, float]:
        rate = self.default_rate if account.rate_limit is None else account.rate_limit
        burst = self.default_burst if account.burst is None else account.burst
        if burst <= 0:  # unset: one second's worth
            burst = rate
        return rate * self.share, max(burst * self.share, 1.0)

    def admit(self, counts: Mapping[str, int], accounts: Mapping[str, Account]) -> float:
        """Take tokens for every account's events, or none: 0.0 if admitted, else the wait."""
        now = self._clock()
        wait = 0.0
        buckets: list[tuple[TokenBucket, int]] = []
        for key, count in counts.items():
            account = accounts.get(key)
            if account is None:
                continue
            rate, burst = self.limits_of(account)
            if rate <= 0:
                continue
            bucket = self._buckets.get(key)
            if bucket is None or bucket.rate != rate or bucket.burst != burst:
                bucket = self._buckets[key] = TokenBucket(rate, burst, burst, now)
            bucket.refill(now)
            wait = max(wait, bucket.wait_for(count))
            buckets.append((bucket, count))
        if wait > 0:
            return wait
        for bucket, count in buckets:
            bucket.tokens -= count
        return 0.0

    def give_back(self, counts: Mapping[str, int]) -> None:
        """Return the tokens ``admit`` took for events that were not stored after all."""
        for key, count in counts.items():
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.tokens = min(bucket.burst, bucket.tokens + count)

    @staticmethod
    def retry_after(wait: float) -> int:
        """Whole seconds for a Retry-After header (at least 1)."""
        return max(1, math.ceil(wait))
