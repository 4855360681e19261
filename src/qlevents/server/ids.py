"""Server-assigned event ids and receive times."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Final

#: At most this many ids per call: the last four hex digits are the event's index.
MAX_IDS: Final = 1 << 16
#: "0000" .. "03ff": the last four hex digits of a request's first 1024 events (the API takes
#: 1000), ready-made; a larger call formats the rest.
_INDEX_HEX: Final = [f"{i:04x}" for i in range(1024)]


#: Random bytes drawn from the OS 4 KiB at a time: one getrandom() per 512 requests, not one
#: per request (measured: docs/architecture.md, "Costs on the request path").
_POOL_BYTES: Final = 4096
_pool = b""
_pool_at = 0


def _random_bits() -> int:
    """64 random bits from the OS's generator (via the pool)."""
    global _pool, _pool_at  # noqa: PLW0603 - the pool is this module's state
    if _pool_at + 8 > len(_pool):
        _pool, _pool_at = os.urandom(_POOL_BYTES), 0
    at = _pool_at
    _pool_at = at + 8
    return int.from_bytes(_pool[at : at + 8])


def _forget_pool() -> None:
    """A forked child must not hand out the bytes its parent hands out too."""
    global _pool, _pool_at
    _pool, _pool_at = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def new_event_ids(count: int) -> list[str]:
    """``count`` UUIDv7 strings: time-ordered, unique across workers and machines.

    48 bits of milliseconds, 58 random bits drawn once per request, and the event's index in
    the request in the last 16 bits: ids are in request order and cost one string
    concatenation each.
    """
    if count > MAX_IDS:
        raise ValueError(f"at most {MAX_IDS} ids per call")
    millis = time.time_ns() // 1_000_000
    rand = _random_bits()
    rand_a = rand & 0x0FFF  # 12 bits
    rand_b = (rand >> 12) & ((1 << 46) - 1)  # 46 bits
    high = f"{millis:012x}7{rand_a:03x}"
    low = f"{(0b10 << 46) | rand_b:012x}"  # the variant bits, then random
    prefix = f"{high[:8]}-{high[8:12]}-{high[12:16]}-{low[:4]}-{low[4:]}"
    if count <= len(_INDEX_HEX):
        return [prefix + _INDEX_HEX[i] for i in range(count)]
    return [prefix + f"{i:04x}" for i in range(count)]


_second_prefix: tuple[int, str] = (-1, "")


def utc_now_iso() -> str:
    """Now, as an RFC 3339 UTC timestamp with microseconds (``...T05:36:29.123456Z``)."""
    global _second_prefix  # noqa: PLW0603 - a one-entry cache: the date changes once a second
    now = time.time_ns() // 1000
    second, micros = divmod(now, 1_000_000)
    if _second_prefix[0] != second:
        stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_prefix = (second, stamp)
    return f"{_second_prefix[1]}.{micros:06d}Z"
