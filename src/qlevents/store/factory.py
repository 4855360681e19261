"""Choosing an event store: ``--store`` / ``QLEVENTS_STORE`` and the stores' own settings.

The server and the CLI name a store and get an :class:`~qlevents.store.base.EventStore`;
nothing outside this package knows which implementation it is.

    sqlite    the embedded store in the data directory (the default)
    memory    nothing survives the process (for trying the API)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from qlevents.settings import SettingsError
from qlevents.store.base import CommitObserver, EventStore

#: The embedded store's file in the data directory.
SQLITE_FILE: Final = "events.sqlite3"
STORE_KINDS: Final = ("sqlite", "memory")


class StoreSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Which event store, and the settings only a store reads."""

    #: "sqlite" (default) or "memory".
    store: str = "sqlite"
    #: SQLite's synchronous mode: FULL (every acknowledged write fsync'd) or EXTRA.
    synchronous: Literal["FULL", "EXTRA"] = "FULL"
    #: Events SQLite may hold waiting for a commit before the API answers 503.
    max_pending_events: Annotated[int, msgspec.Meta(ge=1)] = 200_000
    #: Days events are kept; older ones are pruned every hour (0: kept for ever).
    retain_days: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    def __post_init__(self) -> None:
        if self.store not in STORE_KINDS:
            raise SettingsError(
                f"QLEVENTS_STORE={self.store!r}: unknown store; use {' or '.join(STORE_KINDS)}"
            )


def build_store(
    settings: StoreSettings,
    data_dir: Path,
    *,
    observer: CommitObserver | None = None,
    read_only: bool = False,
) -> EventStore:
    """The store ``settings`` name, not yet opened. ``read_only``: for commands that only
    read (nothing is created; a store that does not exist raises :class:`SettingsError`)."""
    if settings.store == "memory":
        from qlevents.store.memory import MemoryEventStore

        return MemoryEventStore()
    from qlevents.store.sqlite import SQLiteEventStore

    path = data_dir / SQLITE_FILE
    if read_only and not path.exists():
        raise SettingsError(f"no event store at {path}; is --data-dir right?")
    return SQLiteEventStore(
        path,
        synchronous=settings.synchronous,
        max_pending_events=settings.max_pending_events,
        observer=observer,
        read_only=read_only,
        retain_seconds=settings.retain_days * 86_400,
    )
