"""The qlevents client SDK: send view and conversion events without slowing your pages.

Imports nothing of the server (no uvicorn, no prometheus_client, no store). There is no
default endpoint: ``Client(key, endpoint=...)``, or ``QLEVENTS_ENDPOINT`` in the environment.
"""

import importlib
from typing import TYPE_CHECKING

# Each name is imported when first used: ``qlevents send``'s parser and the rest of the
# command line need only the light _config, not the clients (~75 ms of start-up).
# Type checkers see the real imports.
if TYPE_CHECKING:
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

_HOMES = {
    "AsyncClient": "_async_client",
    "Client": "_client",
    "FailureCallback": "_config",
    "SendResult": "_delivery",
    "NOT_DELIVERED": "_outcome",
    "FlushResult": "_outcome",
    "Answer": "_transport",
    "AsyncTransport": "_transport",
    "HTTPTransport": "_transport",
    "HTTPXTransport": "_transport",
    "Transport": "_transport",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'qlevents.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"qlevents.client.{home}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


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
