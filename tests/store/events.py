"""Events and idempotency records to append in store tests."""

from __future__ import annotations

from qlevents.events import StoredEvent
from qlevents.store import IdempotencyRecord


def stored(n: int, client_key: str = "k1", prefix: str = "e") -> list[StoredEvent]:
    """``n`` valid stored events of ``client_key``, views and conversions in turn."""
    return [
        StoredEvent(
            id=f"{prefix}{i}",
            received_at="2026-11-27T00:00:00.000000Z",
            client_key=client_key,
            event="view" if i % 2 == 0 else "conversion",
            product_id=f"p{i}",
            price=float(i) + 0.5,
            units=None if i % 2 == 0 else 2,
            vid=None,
            permalink="https://shop.example/p" if i % 2 == 0 else None,
            tags=["t"],
            channels=["online"],
        )
        for i in range(n)
    ]


def record(
    key: str = "key-1", fingerprint: bytes = b"f1", response: bytes = b"{}", scope: str = "k1"
) -> IdempotencyRecord:
    return IdempotencyRecord(scope=scope, key=key, fingerprint=fingerprint, response=response)
