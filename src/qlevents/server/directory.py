"""The server's in-memory view of the account book, kept fresh without a query per request,
and the checks an event's account must pass.

Each worker holds a snapshot (client key -> account). A background task asks the book every
``book.poll_seconds`` whether anything changed it (SQLite: ``PRAGMA data_version``, a few µs,
every second; the cluster's book: a counter its watch of the bucket moves, every 0.1 s) and
reloads it if so; changes made through this worker's admin API apply at once. The cluster's
book answers from memory: a node cut off from the cluster keeps its last snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

from qlevents.accounts import (
    ACTIVE,
    Account,
    AccountBookLike,
    PreviousKey,
    key_problem,
    normalize_endpoint,
)
from qlevents.events import ErrorEntry

T = TypeVar("T")


class AccountDirectory:
    def __init__(self, book: AccountBookLike, local_endpoint: str) -> None:
        self.book = book
        self.local_endpoint = normalize_endpoint(local_endpoint)
        #: Every working key (current, or replaced and in its grace period) -> its account.
        self.snapshot: dict[str, Account] = {}
        #: Every replaced key, expired or not (expired ones are answered expired_client_key).
        self.previous: dict[str, PreviousKey] = {}
        self._next_expiry = float("inf")
        self._version = -1
        self._poller: asyncio.Task[None] | None = None
        #: Called with the new snapshot after every reload.
        self.listeners: list[Callable[[dict[str, Account]], None]] = []

    def reload(self) -> None:
        self._version = self.book.data_version()
        now = time.time()
        self.snapshot = self.book.working_keys(now)
        self.previous = {k.client_key: k for k in self.book.previous_keys()}
        # A key's grace period ends without any change to the book: reload then.
        pending = [k.expires_at for k in self.previous.values() if k.expires_at > now]
        self._next_expiry = min(pending, default=float("inf"))
        for listener in self.listeners:
            listener(self.snapshot)

    def check(self, index: int, client_key: str) -> ErrorEntry | None:
        """Why the event at ``index`` cannot be taken for ``client_key`` (no such account, a
        disabled one, one homed on another installation, an expired key); None if it can."""
        account = self.snapshot.get(client_key)
        if (
            account is not None
            and account.status == ACTIVE
            and (account.endpoint is None or account.endpoint == self.local_endpoint)
            and client_key not in self.previous
        ):
            return None  # the usual case, without the clock
        problem = key_problem(
            client_key, self.snapshot, self.previous, self.local_endpoint, time.time()
        )
        if problem is None:
            return None
        return ErrorEntry(
            index, "client_key", problem.code, problem.message, endpoint=problem.endpoint
        )

    def change(self, operation: Callable[[AccountBookLike], T]) -> T:
        """Apply ``operation`` to the book and refresh the snapshot at once."""
        result = operation(self.book)
        self.reload()
        return result

    async def change_async(self, operation: Callable[[AccountBookLike], T]) -> T:
        """:meth:`change` from the event loop: a book that writes over the network does it
        in a thread, so that requests go on meanwhile."""
        if not self.book.thread_safe:
            return self.change(operation)
        result = await asyncio.to_thread(operation, self.book)
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
            await asyncio.sleep(self.book.poll_seconds)
            if self.book.data_version() != self._version or time.time() >= self._next_expiry:
                self.reload()
