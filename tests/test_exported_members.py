"""The public API of ``qlevents`` at a glance: changing it is a decision, not an accident."""

from __future__ import annotations

import qlevents


def test_all_is_pinned() -> None:
    """``qlevents.__all__`` lists exactly the public names, and each one exists."""
    assert qlevents.__all__ == [
        "NOT_DELIVERED",
        "Answer",
        "AsyncClient",
        "AsyncTransport",
        "Client",
        "ClientClosedError",
        "ClientError",
        "EventValidationError",
        "FlushResult",
        "QleventsError",
        "SendResult",
        "StoreError",
        "StoreOutcomeUnknownError",
        "StoreUnavailableError",
        "Transport",
        "TransportError",
        "__version__",
    ]
    for name in qlevents.__all__:
        assert hasattr(qlevents, name), name


def test_public_classes_say_they_are_qlevents() -> None:
    """Exported classes are importable from the top level (no private module paths needed)."""
    for name in qlevents.__all__:
        member = getattr(qlevents, name)
        if isinstance(member, type):
            assert member.__module__.startswith("qlevents")
