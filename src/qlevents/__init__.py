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

__all__ = [
    "ClientClosedError",
    "ClientError",
    "EventValidationError",
    "QleventsError",
    "StoreError",
    "StoreUnavailableError",
    "TransportError",
    "__version__",
]
