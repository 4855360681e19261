"""The ``qlevents`` command line.

One module per command group (``serve``, ``config``, ``accounts``, ``events``, ``backup``
and ``restore``, ``send``, ``users``), each with an ``add_parser(commands)`` and its
handler; ``common`` holds what they share, ``serve_settings`` the settings of ``serve`` and
where their values come from. User mistakes print ``Error: ...`` on stderr and exit 2
(usage) or 1 (refused), never a traceback (:class:`~qlevents.cli.errors.CommandError`).
Every command that uses the data directory takes ``--data-dir`` (env ``QLEVENTS_DATA_DIR``,
default ``./qlevents-data``) and ``--config`` (a TOML file, env ``QLEVENTS_CONFIG``).

Why argparse and not click: ``qlevents send`` ships with the SDK's base install (msgspec,
httpx, certifi only), and click would add a dependency to every shop's install for one
command; argparse gives the same help when each option has a help text, and its defaults
are shown (:class:`~qlevents.cli.common.HelpFormatter`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qlevents._exceptions import QleventsError
from qlevents._version import __version__
from qlevents.cli import accounts, backup, config, events, send, serve, users
from qlevents.cli.common import Parser, add_commands
from qlevents.cli.errors import CommandError


def build_parser() -> argparse.ArgumentParser:
    """The ``qlevents`` parser with every command; each sets ``handler`` on its namespace."""
    parser = Parser(prog="qlevents", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"qlevents {__version__}")
    commands = add_commands(parser)
    for group in (serve, config, accounts, events, backup, send, users):
        group.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names (default: ``sys.argv[1:]``); return its exit code."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.handler(args))
    except CommandError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except QleventsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


__all__ = ["CommandError", "build_parser", "main"]
