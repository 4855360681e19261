"""The ``store`` fixture: every EventStore implementation the factory builds, opened.

The contract tests (``test_contract.py``) run against each of them unchanged; a new
implementation joins them by adding its name (and what it needs to run) to ``IMPLEMENTATIONS``.
"jetstream" is the cluster store on a three-node NATS cluster shared by the module's tests,
each on a stream of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from qlevents.store import EventStore
from qlevents.store.factory import StoreSettings, build_store
from tests.cluster import NatsCluster, delete_stream, jetstream_settings, module_cluster

IMPLEMENTATIONS = ["memory", "sqlite", "jetstream"]


#: Three NATS servers with the shipped configuration, shared by a module's tests (tests that
#: kill nodes start their own). Not the session's: other modules count the test process's
#: children.
nats_cluster = module_cluster(3)


@pytest.fixture(params=IMPLEMENTATIONS)
def store_settings(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[StoreSettings, NatsCluster | None]]:
    """The settings of each implementation, and the cluster the jetstream one runs on.

    A plain fixture: ``nats_cluster`` is asked for here, outside the event loop (asked for
    from an async fixture, anyio refuses when pytest has to set it up there)."""
    if request.param == "jetstream":
        cluster: NatsCluster = request.getfixturevalue("nats_cluster")
        yield jetstream_settings(cluster), cluster
    else:
        yield StoreSettings(store=request.param), None


@pytest.fixture
async def store(
    store_settings: tuple[StoreSettings, NatsCluster | None], tmp_path: Path
) -> AsyncIterator[EventStore]:
    """An open store of each implementation, on a fresh data directory (or stream)."""
    settings, cluster = store_settings
    impl = build_store(settings, tmp_path)
    await impl.open()
    yield impl
    await impl.close()
    if cluster is not None:
        await delete_stream(cluster, settings)
