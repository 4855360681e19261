"""The dashboard: ``/ui/`` on the service's port (``/`` leads there).

:class:`Dashboard` is what the server holds: the activity recorder it gives the ingest path,
the ledger, the users, and the Starlette app of the pages (:func:`build_ui`).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from qlevents import settings as _settings
from qlevents.accounts import AccountBook
from qlevents.server.activity import ActivityLedger, ActivityRecorder
from qlevents.server.config import DashboardSettings
from qlevents.server.directory import AccountDirectory
from qlevents.server.ingest import Ingest
from qlevents.server.types import Receive, Scope, Send
from qlevents.store.factory import StoreSettings, build_shared_activity, build_user_store
from qlevents.ui.pages import Deps, build_ui

__all__ = ["Dashboard", "DashboardSettings", "Deps", "build_ui"]


class Dashboard:
    """The dashboard of one server worker."""

    def __init__(
        self,
        data_dir: Path,
        directory: AccountDirectory,
        ingest: Ingest,
        settings: DashboardSettings | None = None,
        storage: StoreSettings | None = None,
    ) -> None:
        """``storage``: the store's settings; on a NATS cluster the users, the sessions and
        the activity are shared by every node (docs/dashboard.md)."""
        # The group of the server's settings; the environment gives it when none is passed.
        self.settings = settings if settings is not None else _settings.from_env(DashboardSettings)
        storage = storage if storage is not None else StoreSettings()
        self.directory = directory
        self.ledger = ActivityLedger(data_dir)
        self.users = build_user_store(storage, data_dir, directory.book)
        self.shared = build_shared_activity(storage, self.ledger, self.settings.activity)
        # On a NATS cluster, the book every node shares (thread-safe: one for both uses).
        shared = cast(AccountBook, directory.book) if directory.book.thread_safe else None
        self._book = shared or AccountBook(data_dir)
        # Written from the recorder's flushing thread only, at most once a minute.
        self._uses_book = shared or AccountBook(data_dir)
        self.recorder = ActivityRecorder(
            self.ledger,
            self._account_of,
            self.settings.activity,
            self._uses_book.record_key_uses,
            self.shared.offer if self.shared is not None else None,
        )
        ingest.recorder = self.recorder
        self.app = build_ui(
            Deps(
                book=self._book,
                users=self.users,
                ledger=self.ledger,
                ingest=ingest,
                local_endpoint=directory.local_endpoint,
                key_grace_seconds=self.settings.key_grace_seconds,
                live_per_second=self.settings.activity.live_per_second,
                cluster=self.shared is not None,
            )
        )

    def _account_of(self, client_key: str) -> str | None:
        account = self.directory.snapshot.get(client_key)
        if account is not None:
            return account.id
        previous = self.directory.previous.get(client_key)
        return previous.account_id if previous is not None else None

    async def start(self) -> None:
        await self.recorder.start()
        if self.shared is not None:
            await self.shared.start()

    async def stop(self) -> None:
        await self.recorder.stop()
        if self.shared is not None:  # after the recorder's last flush: published too
            await self.shared.stop()
        for closing in (self.ledger, self.users, self._book, self._uses_book):
            closing.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The pages, as the server's route table mounts them at ``/ui``."""
        await self.app(scope, receive, send)
