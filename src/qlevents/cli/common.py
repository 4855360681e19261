"""What the commands share: the parser, the ``--data-dir`` option, the local endpoint."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from qlevents.cli.errors import CommandError

#: Where each command module adds its parser (``commands.add_parser(...)``).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DEFAULT_DATA_DIR = "./qlevents-data"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Ends an option's help with ``(default: ...)``, unless it has none (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Reports a mistake with its own usage on stderr, then raises CommandError (exit 2).

    An option it does not know is a mistake too, even in ``parse_known_args``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        # argparse hands what a subcommand does not know up to the top parser, whose error
        # would show the top usage: refusing it here shows the subcommand's usage instead.
        parsed, unknown = super().parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed, unknown

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise CommandError(message, exit_code=2)


def add_commands(parser: argparse.ArgumentParser, dest: str = argparse.SUPPRESS) -> Commands:
    """Give ``parser`` subcommands; naming none is a usage error that lists them."""
    commands: Commands = parser.add_subparsers(
        title="commands", metavar="COMMAND", dest=dest, parser_class=Parser
    )

    def missing(args: argparse.Namespace) -> NoReturn:
        parser.error(f"a command is required: {', '.join(commands.choices)}")

    # A subcommand's own handler replaces this default when one is named.
    parser.set_defaults(handler=missing)
    return commands


def data_dir_option() -> Parser:
    """A parent parser with ``--data-dir``, for the commands that read the data directory."""
    parent = Parser(add_help=False)
    parent.add_argument(
        "--data-dir",
        help=f"data directory (env QLEVENTS_DATA_DIR; default: {DEFAULT_DATA_DIR})",
    )
    return parent


def data_dir_path(args: argparse.Namespace) -> Path:
    """``--data-dir``, else ``QLEVENTS_DATA_DIR``, else the default."""
    return Path(args.data_dir or os.environ.get("QLEVENTS_DATA_DIR") or DEFAULT_DATA_DIR)


def default_endpoint(host: str, port: int) -> str:
    """The events URL of a server listening on ``host:port``, as a client on this host sees it."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/events"
