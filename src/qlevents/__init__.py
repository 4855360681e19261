"""qlevents: the server-to-server events API for e-commerce pricing, server and SDK."""

from qlevents._exceptions import (
    ClientClosedError,
    ClientError,
    EventValidationError,
    QleventsError,
    StoreError,
    StoreUnavailableError,
    TransportError,
)

__version__ = "0.1.0"

# The SDK (after __version__: the transports name it in their User-Agent).
from qlevents.client import (
    DEFAULT_ENDPOINT,
    NOT_DELIVERED,
    Answer,
    AsyncClient,
    AsyncTransport,
    Client,
    SendResult,
    Transport,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "NOT_DELIVERED",
    "Answer",
    "AsyncClient",
    "AsyncTransport",
    "Client",
    "ClientClosedError",
    "ClientError",
    "EventValidationError",
    "QleventsError",
    "SendResult",
    "StoreError",
    "StoreUnavailableError",
    "Transport",
    "TransportError",
    "__version__",
]
