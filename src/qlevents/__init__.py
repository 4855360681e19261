"""qlevents: the server-to-server events API for e-commerce pricing, server and SDK."""

from typing import TYPE_CHECKING

from qlevents._exceptions import (
    ClientClosedError,
    ClientError,
    EventValidationError,
    QleventsError,
    StoreError,
    StoreOutcomeUnknownError,
    StoreUnavailableError,
    TransportError,
)
from qlevents._version import __version__

# The SDK, imported when first used: the server's processes (the store's writer above all)
# should not pay for httpx and the client at start-up. Type checkers see the real imports.
if TYPE_CHECKING:
    from qlevents.client import (
        NOT_DELIVERED,
        Answer,
        AsyncClient,
        AsyncTransport,
        Client,
        FlushResult,
        SendResult,
        Transport,
    )

_SDK_NAMES = frozenset(
    {
        "NOT_DELIVERED",
        "Answer",
        "AsyncClient",
        "AsyncTransport",
        "Client",
        "FlushResult",
        "SendResult",
        "Transport",
    }
)


def __getattr__(name: str) -> object:
    if name in _SDK_NAMES:
        from qlevents import client

        value = getattr(client, name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module 'qlevents' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SDK_NAMES})


__all__ = [
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
