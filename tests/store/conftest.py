"""The ``store`` fixture: every EventStore implementation the factory builds, opened.

The contract tests (``test_contract.py``) run against each of them unchanged; a new
implementation joins them by adding its name (and what it needs to run) to ``IMPLEMENTATIONS``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qlevents.store import EventStore
from qlevents.store.factory import StoreSettings, build_store

IMPLEMENTATIONS = ["memory", "sqlite"]


@pytest.fixture(params=IMPLEMENTATIONS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """An open store of each implementation, on a fresh data directory."""
    impl = build_store(StoreSettings(store=request.param), tmp_path)
    await impl.open()
    yield impl
    await impl.close()
