"""Opening the cluster store: the connection, the servers' fsync check, the events stream.

:class:`~qlevents.store.jetstream.JetStreamEventStore` calls these from ``open``;
docs/cluster.md ("Durable") says why each check is there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DiscardPolicy, PersistMode, StorageType, StoreCompression, StreamConfig
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from qlevents._exceptions import StoreUnavailableError
from qlevents.settings import SettingsError
from qlevents.store import jetstream_api as api
from qlevents.store.jetstream_layout import all_subjects

log: Final = logging.getLogger("qlevents.store")

#: How long ``open`` waits for the servers' /varz answers (seconds).
VARZ_TIMEOUT: Final = 2.0
#: Replicas of the stream on a cluster of three or more servers.
REPLICAS: Final = 3
#: JetStream's "no suitable peers for placement" (answered 400) names its reason; "peer
#: offline" passes by itself once a (re)starting cluster has seen every peer online, while
#: e.g. "insufficient storage" is the operator's to mend.
NO_PEERS_ERR_CODE: Final = 10005


async def connect(servers: Sequence[str], deadline: float, closing: Callable[[], bool]) -> Client:
    """A connection that reconnects for ever (to any server of the cluster), retried until
    ``deadline`` (a servers' restart may be under way). ``closing``: whether a disconnection
    is the store's own doing (not worth a warning)."""

    async def on_error(exc: Exception) -> None:
        log.warning("NATS: %s", exc or type(exc).__name__)

    async def on_disconnected() -> None:
        if not closing():
            log.warning("disconnected from NATS; reconnecting")

    async def on_reconnected() -> None:
        log.info("reconnected to NATS")

    while True:
        try:
            return await nats.connect(
                servers=list(servers),
                name="qlevents",
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                # A server that died silently is noticed in ~10 s, not the default 4 min.
                ping_interval=5,
                max_outstanding_pings=2,
                # Room for a whole 5 MiB request while reconnecting.
                pending_size=16 << 20,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
        except (OSError, NatsError) as exc:
            if time.monotonic() >= deadline:
                raise StoreUnavailableError(
                    f"cannot connect to NATS at {','.join(servers)}: {exc}"
                ) from exc
            await asyncio.sleep(0.5)


async def retrying(deadline: float, what: str, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` until it succeeds, while JetStream cannot answer yet (after a full
    restart it elects its leaders for ~5 s); until ``deadline``."""
    while True:
        try:
            await step()
            return
        except (NatsTimeoutError, ServiceUnavailableError, NoRespondersError) as exc:
            reason = str(exc) or type(exc).__name__
        except APIError as exc:
            if (exc.code is None or exc.code < 500) and not _peer_offline(exc):
                raise StoreUnavailableError(
                    f"JetStream refused {what}: {exc.description} (error {exc.err_code})"
                ) from exc
            reason = str(exc.description)
        if time.monotonic() >= deadline:
            raise StoreUnavailableError(f"JetStream did not answer in time: {reason}")
        log.info("JetStream is not ready (%s); retrying", reason)
        await asyncio.sleep(0.25)


def _peer_offline(exc: APIError) -> bool:
    return exc.err_code == NO_PEERS_ERR_CODE and "offline" in (exc.description or "")


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """What the servers said of themselves at open."""

    size: int | None
    """Servers in the cluster (None: they did not say)."""
    max_batch_messages: int
    max_payload: int | None


async def check_servers(nc: Client, *, allow_lazy_fsync: bool) -> ClusterFacts:
    """Refuse servers that do not fsync every write (unless ``allow_lazy_fsync``); learn the
    cluster's size and limits from their /varz."""
    try:
        facts = await api.ask_servers(nc, VARZ_TIMEOUT)
    except NoRespondersError:
        facts = []
    if not facts:
        message = (
            "cannot tell whether the NATS servers fsync every write: they do not answer"
            f" {api.VARZ_SUBJECT!r} (the import in the shipped nats-server.conf,"
            " docs/cluster.md)"
        )
        if not allow_lazy_fsync:
            raise SettingsError(
                f"{message}; use that configuration, or --allow-lazy-fsync to run without the check"
            )
        log.warning("%s; going on (--allow-lazy-fsync)", message)
        return ClusterFacts(None, api.DEFAULT_BATCH_MESSAGES, None)
    lazy = sorted(fact.name for fact in facts if not fact.sync_always)
    if lazy:
        message = (
            f"the NATS servers {', '.join(lazy)} do not fsync every write: an acknowledged"
            " event could be lost when machines lose power together (Jepsen found 131,418"
            " of 930,005 lost with the default, 2025)"
        )
        if not allow_lazy_fsync:
            raise SettingsError(
                f"{message}. Set `sync_interval: always` in their jetstream block (the"
                " shipped nats-server.conf does), or start with --allow-lazy-fsync to"
                " accept the risk"
            )
        log.warning("%s; going on (--allow-lazy-fsync)", message)
    size = max(fact.cluster_size for fact in facts)
    if len(facts) < size:
        log.warning(
            "only %d of the %d NATS servers answered; the others' fsync setting is unchecked",
            len(facts),
            size,
        )
    payloads = [fact.max_payload for fact in facts if fact.max_payload]
    return ClusterFacts(
        size=size,
        max_batch_messages=min(fact.max_batch_messages for fact in facts),
        max_payload=min(payloads) if payloads else None,
    )


def stream_config(name: str, prefix: str, replicas: int, max_bytes: int) -> StreamConfig:
    return StreamConfig(
        name=name,
        description="qlevents: accepted events (docs/cluster.md)",
        subjects=[all_subjects(prefix)],
        storage=StorageType.FILE,
        num_replicas=replicas,
        # A full stream refuses new events (the API answers 503) and keeps the old ones.
        discard=DiscardPolicy.NEW,
        max_bytes=max_bytes,
        allow_msg_ttl=True,
        allow_atomic=True,
        # "async" would acknowledge before the disk, and turn sync-always off for the stream.
        persist_mode=PersistMode.DEFAULT,
        # Not S2: a replica of an S2 stream killed -9 under load came back with "s2: corrupt
        # input" and never recovered (nats-server 2.15.1; docs/cluster.md).
        compression=StoreCompression.NONE,
    )


async def ensure_stream(
    nc: Client,
    name: str,
    prefix: str,
    *,
    max_bytes: int,
    cluster_size: int | None,
    timeout: float,
) -> None:
    """Create the events stream, or update it to these settings: R3 (fewer on a smaller
    cluster; never fewer than it has), on disk, ``max_bytes`` with discard new."""
    js = nc.jetstream(timeout=timeout)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        info = None
    wanted = min(REPLICAS, cluster_size or REPLICAS)
    if info is not None:
        existing = info.config
        if existing.storage != StorageType.FILE:
            raise SettingsError(f"the stream {name} exists, but not on disk")
        if existing.persist_mode == PersistMode.ASYNC:
            raise SettingsError(
                f"the stream {name} is in persist_mode async: it acknowledges writes before"
                " they are on disk"
            )
        wanted = max(wanted, existing.num_replicas or 1)
    config = stream_config(name, prefix, wanted, max_bytes)
    if info is None:
        try:
            await js.add_stream(config)
        except APIError as exc:
            if cluster_size is not None or exc.err_code not in {
                api.REPLICAS_NOT_SUPPORTED,
                api.INSUFFICIENT_RESOURCES,
            }:
                raise
            # The cluster's size is unknown (no /varz) and it is smaller than three.
            config = stream_config(name, prefix, 1, max_bytes)
            await js.add_stream(config)
        log.info("created the event stream %s (R%d)", name, config.num_replicas)
    elif _differs(info.config, config):
        await js.update_stream(config)
        log.info("updated the event stream %s (R%d)", name, config.num_replicas)


async def require_stream(nc: Client, name: str, servers: Sequence[str], timeout: float) -> None:
    """For a reader: the stream must exist (a wrong --store creates nothing)."""
    try:
        await nc.jetstream(timeout=timeout).stream_info(name)
    except NotFoundError as exc:
        raise SettingsError(
            f"no event stream {name} on {','.join(servers)}; is --store right?"
        ) from exc


def _differs(existing: StreamConfig, wanted: StreamConfig) -> bool:
    return (
        existing.subjects != wanted.subjects
        or existing.num_replicas != wanted.num_replicas
        or existing.discard != wanted.discard
        or existing.max_bytes != wanted.max_bytes
        or (existing.compression or StoreCompression.NONE) != wanted.compression
        or not existing.allow_msg_ttl
        or not existing.allow_atomic
    )
