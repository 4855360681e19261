"""``qlevents backup DEST`` and ``qlevents restore SRC``: a data directory's databases, copied
online (:mod:`qlevents.backup`); a restore is refused while a server uses the directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from qlevents.cli.common import Commands, data_dir_option, data_dir_path


def add_parser(commands: Commands) -> None:
    """Add ``backup`` and ``restore``."""
    backup = commands.add_parser(
        "backup",
        parents=[data_dir_option()],
        help="copy the data directory's databases into DEST, while the server runs",
    )
    backup.add_argument("dest", metavar="DEST", help="a new (or empty) directory for the copy")
    backup.set_defaults(handler=run_backup)
    restore = commands.add_parser(
        "restore",
        parents=[data_dir_option()],
        help="copy a backup into the data directory (its server must be stopped)",
    )
    restore.add_argument("source", metavar="SRC", help="a directory made by 'qlevents backup'")
    restore.add_argument(
        "--force", action="store_true", help="replace the databases the data directory holds"
    )
    restore.set_defaults(handler=run_restore)


def run_backup(args: argparse.Namespace) -> int:
    """Copy each database of the data directory into DEST and list what was copied."""
    from qlevents.backup import MANIFEST, backup
    from qlevents.datadir import require

    data_dir = require(data_dir_path(args))
    dest = Path(args.dest)
    copied = backup(data_dir, dest)
    print(f"Backed up {data_dir} into {dest}:")
    for file in copied:
        print(f"  {file.name:18} {file.bytes:>15,} bytes  schema version {file.schema_version}")
    print(f"  {MANIFEST:18} (what was copied, and when)")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """Copy a backup into the data directory, holding its serve lock meanwhile."""
    from qlevents.backup import restore
    from qlevents.datadir import ServeLock

    data_dir = data_dir_path(args)
    source = Path(args.source)
    if data_dir.is_dir():
        # Held while copying: a server cannot start on half-restored files either.
        with ServeLock(data_dir):
            names = restore(source, data_dir, force=args.force)
    else:  # a new directory: no server can be using it
        names = restore(source, data_dir, force=args.force)
    print(f"Restored {', '.join(names)} from {source} into {data_dir}.")
    print(f"Start the server on it: qlevents serve --data-dir {data_dir}")
    return 0
