"""The answer ``POST /events`` would give a body, with nothing stored.

:func:`dry_run` is the seam behind the dashboard's Validate page and, once wired by the
API, ``POST /events?dry_run=true``: it runs the ingest path's own steps (the UTF-8 check, the
split, per-event validation and the account checks, with the same snapshot of the account
book), so its answer cannot differ from a real one, except that nothing is stored, no rate
limit is spent and no Idempotency-Key is recorded.
"""

from __future__ import annotations

from qlevents.server.ids import utc_now_iso
from qlevents.server.ingest import Ingest, RequestRejected, _check_text
from qlevents.server.responses import encode, request_error


def dry_run(ingest: Ingest, body: bytes) -> tuple[int, bytes]:
    """(status, answer body) of ``POST /events`` for ``body``, storing nothing."""
    try:
        if len(body) > ingest.max_body_bytes:
            raise ingest._too_large(len(body))
        _check_text(body)
        raws = ingest._split(body)
        response = ingest._take_events(raws, ingest.accounts.snapshot, utc_now_iso())
    except RequestRejected as rejected:
        return rejected.status, request_error(rejected.code, rejected.message)
    return 200, encode(response)
