"""Server-assigned event ids and receive times."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

_MASK_62 = (1 << 62) - 1


def new_event_ids(count: int) -> list[str]:
    """``count`` UUIDv7 strings: time-ordered, unique across workers and machines.

    One random draw per request; the events of a request take consecutive values of it.
    """
    millis = time.time_ns() // 1_000_000
    rand_a = int.from_bytes(os.urandom(2)) & 0x0FFF
    rand_b = int.from_bytes(os.urandom(8)) & _MASK_62
    high = (millis << 16) | 0x7000 | rand_a
    ids = []
    for i in range(count):
        low = (0b10 << 62) | ((rand_b + i) & _MASK_62)
        h = f"{high:016x}{low:016x}"
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def utc_now_iso() -> str:
    """Now, as an RFC 3339 UTC timestamp with microseconds (``...T05:36:29.123456Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
