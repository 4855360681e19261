"""A running server takes a rotated account's old key until its grace period ends."""

from __future__ import annotations

import time
from typing import Any

from qlevents.accounts import AccountBook
from tests.support import RunningServer


def _view(key: str) -> dict[str, object]:
    return {"client_key": key, "event": "view", "price": 1, "product_id": "A1",
            "permalink": "https://shop.example/a1"}  # fmt: skip


def _wait_for(
    server: RunningServer, key: str, code: str | None, timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = server.post([_view(key)]).json()
        got = answer["errors"][0]["code"] if answer["errors"] else None
        if got == code or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def test_old_key_works_until_it_expires_then_is_refused_by_name(server: RunningServer) -> None:
    """Both keys store events during the grace period; then expired_client_key."""
    old_key = server.client_key
    book = AccountBook(server.data_dir)
    try:
        account, _ = book.rotate_key(old_key, grace_seconds=2.5)
    finally:
        book.close()
    assert _wait_for(server, account.client_key, None)["processed"]
    assert server.post([_view(old_key)]).json()["processed"]
    refused = _wait_for(server, old_key, "expired_client_key")
    assert refused["errors"][0]["code"] == "expired_client_key"
    assert "Settings > Integration Settings" in refused["errors"][0]["message"]
