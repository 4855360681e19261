"""The qlevents client SDK: send view and conversion events without slowing your pages.

Imports nothing of the server (no uvicorn, no prometheus_client, no store).
"""

from qlevents.client._async_client import AsyncClient
from qlevents.client._client import Client
from qlevents.client._config import DEFAULT_ENDPOINT, FailureCallback
from qlevents.client._delivery import NOT_DELIVERED, SendResult
from qlevents.client._transport import (
    Answer,
    AsyncTransport,
    HTTPTransport,
    HTTPXTransport,
    Transport,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "NOT_DELIVERED",
    "Answer",
    "AsyncClient",
    "AsyncTransport",
    "Client",
    "FailureCallback",
    "HTTPTransport",
    "HTTPXTransport",
    "SendResult",
    "Transport",
]
