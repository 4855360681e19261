"""The server's in-memory view of the account book, kept fresh without a query per request,
and the checks an event's account must pass.

Each worker holds a snapshot (client key -> account). A background task asks SQLite every
second whether another connection changed the book (``PRAGMA data_version``, a few µs) and
reloads it if so; changes made through this worker's admin API apply at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final, TypeVar

from qlevents.accounts import DISABLED, Account, AccountBook, normalize_endpoint
from qlevents.events import ErrorEntry

POLL_SECONDS: Final = 1.0
T = TypeVar("T")


class AccountDirectory:
    def __init__(self, book: AccountBook, local_endpoint: str) -> None:
        self.book = book
        self.local_endpoint = normalize_endpoint(local_endpoint)
        self.snapshot: dict[str, Account] = {}
        self._version = -1
        self._poller: asyncio.Task[None] | None = None
        #: Called with the new snapshot after every reload.
        self.listeners: list[Callable[[dict[str, Account]], None]] = []

    def reload(self) -> None:
        self._version = self.book.data_version()
        self.snapshot = {a.client_key: a for a in self.book.all()}
        for listener in self.listeners:
            listener(self.snapshot)

    def check(self, index: int, client_key: str) -> ErrorEntry | None:
        """Why the event at ``index`` cannot be taken for ``client_key`` (no such account, a
        disabled one, or one homed on another installation); None if it can."""
        account = self.snapshot.get(client_key)
        if account is None:
            return ErrorEntry(
                index,
                "client_key",
                "unknown_client_key",
                "client_key is not the key of any account on this endpoint; copy it from"
                " Settings > Integration Settings.",
            )
        if account.status == DISABLED:
            return ErrorEntry(
                index,
                "client_key",
                "disabled_client_key",
                f"client_key belongs to the disabled account {account.name!r}.",
            )
        if account.endpoint is not None and account.endpoint != self.local_endpoint:
            return ErrorEntry(
                index,
                "client_key",
                "wrong_endpoint",
                f"the account of this client_key is homed on {account.endpoint}, not on"
                f" {self.local_endpoint}; send its events there.",
                endpoint=account.endpoint,
            )
        return None

    def change(self, operation: Callable[[AccountBook], T]) -> T:
        """Apply ``operation`` to the book and refresh the snapshot at once."""
        result = operation(self.book)
        self.reload()
        return result

    async def start(self) -> None:
        self.reload()
        self._poller = asyncio.create_task(self._poll(), name="qlevents-account-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if self.book.data_version() != self._version:
                self.reload()
