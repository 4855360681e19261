"""What the commands share: the parser, the data directory and config file options, the
local endpoint."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from qlevents.cli.errors import CommandError

if TYPE_CHECKING:
    from qlevents.cli.serve_settings import Resolved
    from qlevents.store.factory import StoreSettings

#: Where each command module adds its parser (``commands.add_parser(...)``).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DEFAULT_DATA_DIR = "./qlevents-data"
#: The environment variable naming the config file when ``--config`` is not given.
CONFIG_VARIABLE = "QLEVENTS_CONFIG"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Ends an option's help with ``(default: ...)``, unless it has none (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Reports a mistake with its own usage on stderr, then raises CommandError (exit 2).

    An option it does not know is a mistake too, even in ``parse_known_args``. ``populate``
    adds options when the parser is first used, not when it is built: ``serve``'s options
    come from the server's settings, which ``qlevents send`` (in the SDK's install) must not
    import.
    """

    def __init__(
        self,
        *args: Any,
        populate: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._populate = populate

    def populated(self) -> Parser:
        """This parser with every option it has (``populate`` runs once, on first use)."""
        populate, self._populate = self._populate, None
        if populate is not None:
            populate(self)
        return self

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        self.populated()
        # argparse hands what a subcommand does not know up to the top parser, whose error
        # would show the top usage: refusing it here shows the subcommand's usage instead.
        parsed, unknown = super().parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed, unknown

    def format_usage(self) -> str:
        self.populated()
        return super().format_usage()

    def format_help(self) -> str:
        self.populated()
        return super().format_help()

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


def config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE``: settings from a TOML file (below the environment's)."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"a TOML file of settings, keys as 'qlevents config show' names them"
        f" (env {CONFIG_VARIABLE})",
    )


def data_dir_option() -> Parser:
    """A parent parser with ``--data-dir`` and ``--config``, for the commands that use the
    data directory."""
    parent = Parser(add_help=False)
    parent.add_argument(
        "--data-dir",
        help=f"data directory (env QLEVENTS_DATA_DIR; default: {DEFAULT_DATA_DIR})",
    )
    config_option(parent)
    return parent


def config_file(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> tuple[Path, str] | None:
    """The config file to read, and what named it (``--config`` or the variable); or None."""
    env = os.environ if environ is None else environ
    if getattr(args, "config", None):
        return Path(args.config), "--config"
    if env.get(CONFIG_VARIABLE):
        return Path(env[CONFIG_VARIABLE]), CONFIG_VARIABLE
    return None


def data_dir_path(args: argparse.Namespace) -> Path:
    """``--data-dir``, else ``QLEVENTS_DATA_DIR``, else the config file's, else the default."""
    if config_file(args) is None:  # the settings of the server are not needed (nor imported)
        return Path(args.data_dir or os.environ.get("QLEVENTS_DATA_DIR") or DEFAULT_DATA_DIR)
    return _resolve(args).settings.server.data_dir


def store_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--store``, for the commands that read or write the store or the accounts."""
    parser.add_argument(
        "--store",
        metavar="STORE",
        help="sqlite (the data directory's), or a NATS cluster: nats://HOST:PORT[,...]"
        " (env QLEVENTS_STORE)",
    )


def store_settings(args: argparse.Namespace) -> StoreSettings:
    """The event store's settings: ``--store``, then the environment, else the config file,
    else defaults."""
    from msgspec.structs import asdict

    from qlevents.store.factory import StoreSettings

    if config_file(args) is None:
        from qlevents.settings import from_env

        settings = from_env(StoreSettings)
    else:
        settings = _resolve(args).settings.server.storage
    if getattr(args, "store", None):
        return StoreSettings(**{**asdict(settings), "store": args.store})
    return settings


def _resolve(args: argparse.Namespace) -> Resolved:
    try:
        from qlevents.cli.serve_settings import resolve
    except ImportError as exc:  # the server's settings come with its extra
        raise CommandError(
            f"reading a config file needs the server extra ({exc.name} is missing):"
            " pip install 'qlevents[server]'"
        ) from exc
    return resolve(args)


def default_endpoint(host: str, port: int) -> str:
    """The events URL of a server listening on ``host:port``, as a client on this host sees it."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/events"
