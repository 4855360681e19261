"""``qlevents config show``: the settings ``serve`` would run with, and where each came from."""

from __future__ import annotations

import argparse

from qlevents.cli.common import Commands, add_commands
from qlevents.cli.serve import add_serve_options


def add_parser(commands: Commands) -> None:
    """Add ``config`` and its subcommand ``show`` (which takes every ``serve`` option)."""
    config = commands.add_parser("config", help="show the settings serve would run with")
    actions = add_commands(config)
    show = actions.add_parser(
        "show",
        help="print each setting, its value, and where it came from (default, file, env or option)",
        populate=add_serve_options,
    )
    show.set_defaults(handler=run_show)


def run_show(args: argparse.Namespace) -> int:
    """Print the effective settings, one a line: name, value, source."""
    from qlevents.cli.serve_settings import DEFAULT, DERIVED, SECRET, SETTINGS, resolve, show

    resolved = resolve(args)
    if resolved.config is None:
        print("config file: none (--config FILE, or QLEVENTS_CONFIG)")
    else:
        print(f"config file: {resolved.config[0]} (from {resolved.config[1]})")
    rows = [("SETTING", "VALUE", "FROM")]
    for setting in SETTINGS:
        value = show(setting.value_in(resolved.settings))
        if setting.name in SECRET and value:
            value = "(set, not shown)"
        source = resolved.sources[setting.name]
        if source == DEFAULT and setting.name in DERIVED:
            source = f"default ({DERIVED[setting.name]})"
        rows.append((setting.name, value or '""', source))
    width = max(len(row[0]) for row in rows) + 2
    value_width = max(len(row[1]) for row in rows) + 2
    for name, value, source in rows:
        print(f"{name:{width}}{value:{value_width}}{source}")
    return 0
