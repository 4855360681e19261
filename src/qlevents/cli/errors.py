"""The error a command raises for a user mistake or a refused operation."""

from __future__ import annotations

from qlevents._exceptions import QleventsError


class CommandError(QleventsError):
    """A user mistake (``exit_code`` 2, usage) or a refused operation (1).

    ``qlevents`` prints it as ``Error: ...`` on stderr and exits with its code; no traceback.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
