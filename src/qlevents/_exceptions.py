"""The exceptions qlevents raises.

One base for the whole package, so ``except qlevents.QleventsError`` catches all of them::

    QleventsError
     ├── EventValidationError        an event broke a rule of the contract (SDK, at the call site)
     ├── ClientError                 the SDK was misused or is in the wrong state
     │    └── ClientClosedError       an event was given to a closed client
     ├── TransportError              a request could not be completed (network, timeout, 5xx)
     ├── CommandError                a command-line mistake or refusal (qlevents.cli; exit code)
     ├── SettingsError               a setting has a value that cannot be used (qlevents.settings)
     ├── SchemaVersionError          a database file was written by a newer qlevents
     ├── BackupError / DataDirError  a backup, a restore or the data directory cannot be used
     └── StoreError                  the event store failed
          └── StoreUnavailableError   the store cannot take a write right now (the API answers 503)
               └── StoreOutcomeUnknownError  the store cannot tell whether a write was stored
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qlevents.validation import Problem


class QleventsError(Exception):
    """Base class of every exception raised by qlevents."""


class EventValidationError(QleventsError, ValueError):
    """An event broke one or more rules of the API contract; ``problems`` lists them all."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(p.message for p in self.problems))


class ClientError(QleventsError):
    """The SDK was used in a way it does not support."""


class ClientClosedError(ClientError):
    """The client was closed; it takes no more events."""


class TransportError(QleventsError):
    """A request to the events API could not be completed."""


class StoreError(QleventsError):
    """The event store failed."""


class StoreUnavailableError(StoreError):
    """The store cannot take a write now (disk full, locked, overloaded); retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreOutcomeUnknownError(StoreUnavailableError):
    """The store cannot tell whether the write was stored (it timed out waiting for the
    acknowledgement); a retry with the same idempotency key finds out without storing twice."""
