"""``qlevents events export``: the stored events as NDJSON on stdout."""

from __future__ import annotations

import argparse
import sys

from qlevents.cli.common import Commands, add_commands, data_dir_option, data_dir_path
from qlevents.cli.errors import CommandError


def add_parser(commands: Commands) -> None:
    """Add ``events`` and its subcommand ``export``."""
    events = commands.add_parser("events", help="read stored events")
    actions = add_commands(events)
    export = actions.add_parser(
        "export", parents=[data_dir_option()], help="write stored events as NDJSON to stdout"
    )
    export.add_argument("--client-key", help="only this account's events")
    export.add_argument("--after", type=int, default=0, help="start after this store position")
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Write every stored event after ``--after`` (of one account, or all) to stdout."""
    import msgspec

    from qlevents.store.sqlite import SQLiteEventStore

    path = data_dir_path(args) / "events.sqlite3"
    if not path.exists():
        raise CommandError(f"no event store at {path}; is --data-dir right?")
    store = SQLiteEventStore(path)
    encoder = msgspec.json.Encoder()
    out = sys.stdout.buffer
    position = args.after
    while True:
        batch = store.read_sync(position, 5000, args.client_key)
        for position, event in batch:  # noqa: B007 - the last position carries on
            out.write(encoder.encode(event) + b"\n")
        if len(batch) < 5000:
            break
    out.flush()
    return 0
