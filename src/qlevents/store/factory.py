"""Choosing an event store: ``--store`` / ``QLEVENTS_STORE`` and the stores' own settings.

The server and the CLI name a store and get an :class:`~qlevents.store.base.EventStore`;
nothing outside this package knows which implementation it is.

    sqlite    the embedded store in the data directory (the default)
    memory    nothing survives the process (for trying the API)
    nats://HOST:PORT[,nats://HOST:PORT...]
              a NATS JetStream cluster (docs/cluster.md)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Literal

import msgspec

from qlevents.settings import SettingsError
from qlevents.store.base import CommitObserver, EventStore

if TYPE_CHECKING:
    from qlevents.accounts import AccountBookLike
    from qlevents.server.activity import ActivityLedger, ActivitySettings
    from qlevents.server.activity_jetstream import SharedActivity
    from qlevents.store.jetstream import PublishObserver
    from qlevents.users import UserStoreLike

#: The embedded store's file in the data directory.
SQLITE_FILE: Final = "events.sqlite3"
STORE_KINDS: Final = ("sqlite", "memory")
#: The cluster store is named by its servers' URLs.
NATS_SCHEMES: Final = ("nats://", "tls://")
_STORE_CHOICES: Final = "sqlite, memory or nats://HOST:PORT[,nats://HOST:PORT...]"
#: What --store takes, checked where settings are read (names the setting in its error).
STORE_PATTERN: Final = r"^(sqlite|memory|(tls|nats)://\S+)$"


class StoreSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Which event store, and the settings only a store reads."""

    #: "sqlite" (default), "memory", or the NATS servers' URLs, comma-separated.
    store: Annotated[str, msgspec.Meta(pattern=STORE_PATTERN)] = "sqlite"
    #: SQLite's synchronous mode: FULL (every acknowledged write fsync'd) or EXTRA.
    synchronous: Literal["FULL", "EXTRA"] = "FULL"
    #: Events SQLite may hold waiting for a commit before the API answers 503.
    max_pending_events: Annotated[int, msgspec.Meta(ge=1)] = 200_000
    #: Days events are kept; older ones are pruned every hour (0: kept for ever).
    retain_days: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    #: The cluster store: start even when the NATS servers do not fsync every write.
    allow_lazy_fsync: bool = False
    #: Seconds one publish waits for the stream's answer, and an append keeps retrying
    #: (through a leader election) before the API answers 503.
    nats_publish_timeout: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    nats_retry_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    #: The stream's size limit (bytes); a full stream takes nothing more (503).
    nats_max_bytes: Annotated[int, msgspec.Meta(ge=1 << 20)] = 10 << 30
    #: Subjects start with <prefix>.v1 and the stream is named <PREFIX>.
    nats_prefix: str = "qlevents"
    #: Ingest nodes behind the load balancer: each enforces 1/cluster_nodes of every
    #: account's rate limit, so the installation admits the limit (docs/cluster.md).
    cluster_nodes: Annotated[int, msgspec.Meta(ge=1)] = 1

    def __post_init__(self) -> None:
        if self.store not in STORE_KINDS and not self.is_nats:
            raise SettingsError(f"unknown store {self.store!r}; use {_STORE_CHOICES}")
        if self.is_nats:
            bad = [url for url in self.nats_servers if not url.startswith(NATS_SCHEMES)]
            if bad or not self.nats_servers:
                raise SettingsError(
                    f"QLEVENTS_STORE={self.store!r}: {bad[0] if bad else 'no server'} is not a"
                    " nats:// URL; use nats://HOST:PORT[,nats://HOST:PORT...]"
                )
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.nats_prefix):
            raise SettingsError(
                f"QLEVENTS_NATS_PREFIX={self.nats_prefix!r}: use letters, digits, _ and -"
            )

    @property
    def is_nats(self) -> bool:
        """Whether the store is the NATS cluster's."""
        return self.store.startswith(NATS_SCHEMES)

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.store.split(",") if url.strip()]


def build_store(
    settings: StoreSettings,
    data_dir: Path,
    *,
    observer: CommitObserver | None = None,
    publish_observer: PublishObserver | None = None,
    read_only: bool = False,
) -> EventStore:
    """The store ``settings`` name, not yet opened. ``read_only``: for commands that only
    read (nothing is created; a store that does not exist raises :class:`SettingsError`).
    ``publish_observer`` sees every append of the cluster store (its latency and retries)."""
    if settings.is_nats:
        from qlevents.store.jetstream import JetStreamEventStore

        return JetStreamEventStore(
            settings.nats_servers,
            prefix=settings.nats_prefix,
            max_bytes=settings.nats_max_bytes,
            publish_timeout=settings.nats_publish_timeout,
            retry_seconds=settings.nats_retry_seconds,
            allow_lazy_fsync=settings.allow_lazy_fsync,
            observer=observer,
            publish_observer=publish_observer,
            read_only=read_only,
        )
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


def build_account_book(
    settings: StoreSettings, data_dir: Path, *, readonly: bool = False
) -> AccountBookLike:
    """The account book beside the store ``settings`` name: the data directory's SQLite
    book, or on a NATS cluster the bucket every node shares (opened: it connects now)."""
    if settings.is_nats:
        from qlevents.accounts_jetstream import JetStreamAccountBook

        return JetStreamAccountBook(
            settings.nats_servers, prefix=settings.nats_prefix, readonly=readonly
        )
    from qlevents.accounts import AccountBook

    return AccountBook(data_dir, readonly=readonly)


def build_user_store(
    settings: StoreSettings, data_dir: Path, book: AccountBookLike | None = None
) -> UserStoreLike:
    """The dashboard's users and sessions beside the store ``settings`` name: the data
    directory's (in its account book's file), or on a NATS cluster entries of the shared
    account book's bucket (``book``, the server's; else one opened now, closed with it)."""
    if settings.is_nats:
        from qlevents.accounts_jetstream import JetStreamAccountBook
        from qlevents.users_jetstream import JetStreamUserStore

        if isinstance(book, JetStreamAccountBook):
            return JetStreamUserStore(book)
        opened = build_account_book(settings, data_dir)
        assert isinstance(opened, JetStreamAccountBook)
        return JetStreamUserStore(opened, owns_book=True)
    from qlevents.users import UserStore

    return UserStore(data_dir)


def build_shared_activity(
    settings: StoreSettings, ledger: ActivityLedger, activity: ActivitySettings
) -> SharedActivity | None:
    """On a NATS cluster, what shares a node's dashboard activity with the other nodes
    (not yet started); None on one machine, where the ledger is the whole story."""
    if not settings.is_nats:
        return None
    from qlevents.server.activity_jetstream import STREAM_MAX_BYTES, SharedActivity

    return SharedActivity(
        settings.nats_servers,
        settings.nats_prefix,
        ledger,
        activity,
        max_bytes=min(STREAM_MAX_BYTES, settings.nats_max_bytes // 8),
    )
