"""``qlevents events``: export the stored events (with their positions) or the kept failed
ones, prune old ones."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, date, datetime
from typing import Final

from qlevents.cli.common import (
    Commands,
    add_commands,
    data_dir_option,
    data_dir_path,
    store_option,
    store_settings,
)
from qlevents.cli.errors import CommandError

#: Events read from the store at a time.
EXPORT_PAGE: Final = 5000
_DATE_ONLY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")


def add_parser(commands: Commands) -> None:
    """Add ``events`` and its subcommands ``export``, ``tail`` and ``prune``."""
    events = commands.add_parser("events", help="read stored events, or prune old ones")
    actions = add_commands(events)
    export = actions.add_parser(
        "export",
        parents=[data_dir_option()],
        help="write stored events as NDJSON to stdout, each with its position;"
        " with --failed, the failed events the dashboard keeps",
    )
    export.add_argument(
        "--failed",
        action="store_true",
        help="the kept failed events instead: each as sent, with its errors and when it was"
        " received (the newest per account, as the failed_keep and failed_days settings bound"
        " them)",
    )
    export.add_argument(
        "--client-key", help="only events sent with this client key (with --failed: any key)"
    )
    export.add_argument(
        "--account",
        metavar="ACCOUNT",
        help="with --failed: only this account's, under every key it had (its name or key)",
    )
    export.add_argument(
        "--after",
        type=int,
        default=0,
        metavar="POSITION",
        help="only events after this position (the last one a previous export printed)",
    )
    store_option(export)
    export.set_defaults(handler=run_export)
    tail = actions.add_parser(
        "tail",
        parents=[data_dir_option()],
        help="write stored events as NDJSON as export does; with --follow, then each new one"
        " as it is stored, until Ctrl-C",
    )
    tail.add_argument("--client-key", help="only this account's events")
    tail.add_argument(
        "--after", type=int, default=0, metavar="POSITION", help="only events after this position"
    )
    tail.add_argument("--follow", "-f", action="store_true", help="wait for new events")
    store_option(tail)
    tail.set_defaults(handler=run_tail)
    prune = actions.add_parser(
        "prune",
        parents=[data_dir_option()],
        help="delete the events received before a date (the oldest part of the log)",
    )
    prune.add_argument(
        "--before",
        required=True,
        metavar="DATE",
        help="YYYY-MM-DD (midnight UTC) or an RFC 3339 time such as 2026-11-01T12:00:00+01:00",
    )
    prune.add_argument(
        "--vacuum",
        action="store_true",
        help="then rewrite the whole file to give back all free space (writes wait meanwhile)",
    )
    prune.set_defaults(handler=run_prune)


def run_export(args: argparse.Namespace) -> int:
    """Write every stored event after ``--after`` (of one account, or all) to stdout, each
    line an object whose first field is the event's ``position``."""
    if args.failed:
        return export_failed(args)
    if args.account is not None:
        raise CommandError(
            "--account goes with --failed; stored events are chosen by --client-key", 2
        )
    return write_stored(args, follow=False)


def write_stored(args: argparse.Namespace, *, follow: bool) -> int:
    """The stored events after ``--after`` as NDJSON on stdout, ``{"position": N, ...}``;
    with ``follow``, then each new one (read every :data:`FOLLOW_POLL` s) until Ctrl-C."""
    import asyncio
    import contextlib

    import msgspec

    from qlevents.datadir import require
    from qlevents.store.factory import build_store

    if args.after < 0:
        raise CommandError(f"--after must be a position (0 or more); got {args.after}", 2)
    settings = store_settings(args)
    # A cluster's events are in its stream: the data directory plays no part.
    data_dir = data_dir_path(args) if settings.is_nats else require(data_dir_path(args))
    store = build_store(settings, data_dir, read_only=True)
    encoder = msgspec.json.Encoder()
    out = sys.stdout.buffer

    async def write() -> None:
        await store.open()
        try:
            position = args.after
            while True:
                batch = await store.read(position, EXPORT_PAGE, args.client_key)
                for position, event in batch:  # the last position carries on
                    # {"position": N, <the event's fields>}: the event encodes as an object.
                    out.write(b'{"position":%d,' % position + encoder.encode(event)[1:] + b"\n")
                if len(batch) < EXPORT_PAGE:
                    if not follow:
                        return
                    out.flush()
                    await asyncio.sleep(FOLLOW_POLL)
        finally:
            await store.close()

    # Ctrl-C is how --follow ends (not an error); it interrupts an export (exit 130).
    with contextlib.suppress(*((KeyboardInterrupt,) if follow else ())):
        asyncio.run(write())
    out.flush()
    return 0


def export_failed(args: argparse.Namespace) -> int:
    """Write the failed events the activity ledger keeps (``--failed``) to stdout, oldest first."""
    from qlevents.accounts import ACCOUNTS_FILE, AccountBook
    from qlevents.cli.accounts import find
    from qlevents.datadir import require

    try:
        from qlevents.server.activity import ACTIVITY_FILE, ActivityLedger
    except ImportError as exc:  # the ledger is the server's, read with its extra
        raise CommandError(
            f"--failed needs the server extra ({exc.name} is missing):"
            " pip install 'qlevents[server]'"
        ) from exc

    if args.after:
        raise CommandError("--after reads stored events by position; failed events have none", 2)
    if args.account is not None and args.client_key is not None:
        raise CommandError("give --account or --client-key, not both", 2)
    data_dir = require(data_dir_path(args))
    account_id = None
    if args.account is not None:
        if not (data_dir / ACCOUNTS_FILE).exists():
            raise CommandError(f"there is no account book in {data_dir}: no account to export")
        book = AccountBook(data_dir, readonly=True)
        try:
            account_id = find(book, args.account).id
        finally:
            book.close()
    if not (data_dir / ACTIVITY_FILE).exists():  # no server has run here yet: none failed
        return 0
    ledger = ActivityLedger(data_dir, readonly=True)
    out = sys.stdout.buffer
    try:
        for line in ledger.export_failed(account_id, args.client_key):
            out.write(line)
    finally:
        ledger.close()
    out.flush()
    return 0


#: Seconds ``tail --follow`` waits before it reads again when there was nothing new.
FOLLOW_POLL: Final = 0.5


def run_tail(args: argparse.Namespace) -> int:
    """Write the stored events after ``--after`` as ``export`` does; with ``--follow`` go on
    writing each new one (read from the store every half second) until interrupted."""
    return write_stored(args, follow=args.follow)


def run_prune(args: argparse.Namespace) -> int:
    """Delete the events received before ``--before`` and say what was removed."""
    from qlevents.datadir import require
    from qlevents.store.factory import build_store
    from qlevents.store.sqlite import SQLiteEventStore

    cutoff = parse_cutoff(args.before)
    # read_only: no writer process is started and a missing store is an error; prune_sync
    # deletes through a connection of its own, beside a running server's writer.
    store = build_store(store_settings(args), require(data_dir_path(args)), read_only=True)
    if not isinstance(store, SQLiteEventStore):
        raise CommandError("this store keeps nothing on disk: there is nothing to prune")
    received_before = cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # as received_at is written
    shown = received_before if cutoff.microsecond else cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    pruned = store.prune_sync(received_before, vacuum=args.vacuum)
    if not pruned.events:
        print(f"No event was received before {shown}: nothing pruned.")
    else:
        print(
            f"Pruned {pruned.events:,} event{'' if pruned.events == 1 else 's'} received"
            f" before {shown}"
            f" (positions up to {pruned.through}); {pruned.bytes_freed or 0:,} bytes freed."
        )
    return 0


def parse_cutoff(text: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an RFC 3339 time with its offset, in UTC."""
    try:
        if _DATE_ONLY.fullmatch(text):
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"--before {text!r} is neither a date (2026-11-01) nor an RFC 3339 time"
            " (2026-11-01T12:00:00Z)",
            exit_code=2,
        ) from None
    if moment.tzinfo is None:
        raise CommandError(
            f"--before {text!r} has no time zone: add Z (UTC) or an offset such as +01:00",
            exit_code=2,
        )
    return moment.astimezone(UTC)
