"""The answer ``POST /events`` would give a body, with nothing stored.

:func:`dry_run` is the dashboard's Validate page; ``POST /events?dry_run=true`` is the same
for the API. Both run the ingest path's own steps (:meth:`Ingest.accept`: the UTF-8 check,
the split, per-event validation and the account checks, with the same snapshot of the
account book), so the answer cannot differ from a real one, except that nothing is stored,
no rate limit is spent and no Idempotency-Key is recorded.
"""

from __future__ import annotations

from qlevents.server.ingest import Ingest
from qlevents.server.responses import RequestRejected, encode, request_error


def dry_run(ingest: Ingest, body: bytes) -> tuple[int, bytes]:
    """(status, answer body) of ``POST /events?dry_run=true`` for ``body``: nothing stored."""
    try:
        ingest.bodies.check_size(len(body))
        response = ingest.accept(body)
    except RequestRejected as rejected:
        return rejected.status, request_error(rejected.code, rejected.message)
    return 200, encode(response)
