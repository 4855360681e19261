"""The qlevents client SDK: send view and conversion events without slowing your pages.

Imports nothing of the server (no uvicorn, no prometheus_client, no store). There is no
default endpoint: ``Client(key, endpoint=...)``, or ``QLEVENTS_ENDPOINT`` in the environment.
"""

from qlevents.client._async_client import AsyncClient
from qlevents.client._client import Client
from qlevents.client._config import FailureCallback
from qlevents.client._delivery import SendResult
from qlevents.client._outcome import NOT_DELIVERED, FlushResult
from qlevents.client._transport import (
    Answer,
    AsyncTransport,
    HTTPTransport,
    HTTPXTransport,
    Transport,
)

__all__ = [
    "NOT_DELIVERED",
    "Answer",
    "AsyncClient",
    "AsyncTransport",
    "Client",
    "FailureCallback",
    "FlushResult",
    "HTTPTransport",
    "HTTPXTransport",
    "SendResult",
    "Transport",
]
