"""``qlevents events export``: the stored events as NDJSON on stdout."""

from __future__ import annotations

import argparse
import sys

from qlevents.cli.common import Commands, add_commands, data_dir_option, data_dir_path


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
    import asyncio

    import msgspec

    from qlevents.settings import from_env
    from qlevents.store.factory import StoreSettings, build_store

    store = build_store(from_env(StoreSettings), data_dir_path(args), read_only=True)
    encoder = msgspec.json.Encoder()
    out = sys.stdout.buffer

    async def export() -> None:
        await store.open()
        try:
            position = args.after
            while True:
                batch = await store.read(position, EXPORT_PAGE, args.client_key)
                for position, event in batch:  # noqa: B007 - the last position carries on
                    out.write(encoder.encode(event) + b"\n")
                if len(batch) < EXPORT_PAGE:
                    break
        finally:
            await store.close()

    asyncio.run(export())
    out.flush()
    return 0


#: Events read from the store at a time.
EXPORT_PAGE = 5000
