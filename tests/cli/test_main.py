"""``qlevents``: how it reports mistakes, its help, and how it is started."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest

from qlevents import QleventsError
from qlevents._version import __version__
from qlevents.cli import build_parser, main
from qlevents.cli.common import Parser
from qlevents.cli.errors import CommandError
from tests.cli.conftest import RunCli


def every_parser(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and, depth first, the parsers of its subcommands (with all their options)."""
    if isinstance(parser, Parser):
        parser.populated()
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                yield from every_parser(subparser)


class TestMistakes:
    @pytest.mark.parametrize(
        ("argv", "usage", "commands"),
        [
            (
                [],
                "usage: qlevents [",
                "serve, config, accounts, events, backup, restore, send, users",
            ),
            (
                ["accounts"],
                "usage: qlevents accounts [",
                "add, list, show, disable, enable, move, limit",
            ),
            (["events"], "usage: qlevents events [", "export, tail, prune"),
            (["config"], "usage: qlevents config [", "show"),
        ],
    )
    def test_a_missing_command_lists_the_commands(
        self, cli: RunCli, argv: list[str], usage: str, commands: str
    ) -> None:
        """No command: that level's usage, then 'a command is required: ...', exit 2."""
        code, out, err = cli(*argv)
        assert code == 2 and out == ""
        assert err.startswith(usage)
        assert err.endswith(f"Error: a command is required: {commands}\n")

    def test_an_unknown_command_names_no_internal_name(self, cli: RunCli) -> None:
        """A mistyped command is reported as COMMAND with its choices, not as a field name."""
        code, _, err = cli("accounts", "frobnicate")
        assert code == 2
        assert "Error: argument COMMAND: invalid choice: 'frobnicate'" in err
        assert "'add', 'list', 'show'" in err
        assert "_action" not in err

    @pytest.mark.parametrize(
        ("argv", "missing"),
        [
            (["accounts", "show"], "ACCOUNT"),
            (["send"], "FILE"),
            (["backup"], "DEST"),
            (["restore"], "SRC"),
            (["events", "prune"], "--before"),
        ],
    )
    def test_a_missing_argument_is_named_as_in_the_usage(
        self, cli: RunCli, argv: list[str], missing: str
    ) -> None:
        """A missing positional argument is named by its metavar, as the usage line shows it."""
        code, _, err = cli(*argv)
        assert code == 2
        assert err.endswith(f"Error: the following arguments are required: {missing}\n")

    @pytest.mark.parametrize(
        ("argv", "usage"),
        [
            (["serve", "--prot", "1"], "usage: qlevents serve ["),
            (["accounts", "add", "shop", "--endpont", "x"], "usage: qlevents accounts add ["),
            (["events", "export", "--aftr", "3"], "usage: qlevents events export ["),
            (["config", "show", "--wrokers", "3"], "usage: qlevents config show ["),
            (["send", "events.ndjson", "--batchsize", "3"], "usage: qlevents send ["),
        ],
    )
    def test_a_mistyped_option_shows_its_commands_usage(
        self, cli: RunCli, argv: list[str], usage: str
    ) -> None:
        """An unknown option of a subcommand shows that subcommand's usage, not the top one."""
        code, out, err = cli(*argv)
        assert code == 2 and out == ""
        assert err.startswith(usage)
        assert err.endswith(f"Error: unrecognized arguments: {' '.join(argv[-2:])}\n")

    def test_command_errors_are_qlevents_errors_with_an_exit_code(self) -> None:
        """``except QleventsError`` catches a CommandError, which carries its exit code."""
        with pytest.raises(QleventsError) as caught:
            raise CommandError("bad option", exit_code=2)
        assert isinstance(caught.value, CommandError) and caught.value.exit_code == 2


class TestHelp:
    def test_every_option_and_argument_has_a_help_text(self) -> None:
        """Each command's options and arguments say what they are for."""
        unexplained = [
            f"{parser.prog}: {action.option_strings or action.dest}"
            for parser in every_parser(build_parser())
            for action in parser._actions
            # a group of commands is explained by its commands' help (listed in the next check)
            if not action.help and not isinstance(action, argparse._SubParsersAction)
        ]
        unexplained += [
            f"{parser.prog}: {command.dest}"
            for parser in every_parser(build_parser())
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for command in action._choices_actions
            if not command.help
        ]
        assert unexplained == []

    def test_help_shows_defaults_but_never_none(self) -> None:
        """Options with a default show it; options without one do not say 'None' or 'False'."""
        # white space as one space: where argparse wraps a line depends on the terminal
        pages = {
            parser.prog: " ".join(parser.format_help().split())
            for parser in every_parser(build_parser())
        }
        assert "port to listen on (default: 8080)" in pages["qlevents serve"]
        assert "events per request (default: 500)" in pages["qlevents send"]
        assert "(default: http://HOST:PORT/events)" in pages["qlevents serve"]
        assert "QLEVENTS_MAX_EVENTS" in pages["qlevents serve"]  # how options map to variables
        assert [prog for prog, page in pages.items() if "(default: None)" in page] == []
        assert [prog for prog, page in pages.items() if "(default: False)" in page] == []

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--version prints the package version and exits 0."""
        with pytest.raises(SystemExit) as exited:
            main(["--version"])
        assert exited.value.code == 0
        assert capsys.readouterr().out == f"qlevents {__version__}\n"


class TestStarting:
    def test_the_console_script_is_main(self) -> None:
        """The installed ``qlevents`` script runs qlevents.cli.main."""
        (script,) = entry_points(group="console_scripts", name="qlevents")
        assert script.value == "qlevents.cli:main"
        assert script.load() is main

    def test_python_dash_m_qlevents(self) -> None:
        """``python -m qlevents`` runs the command line and exits with its code."""
        done = subprocess.run(
            [sys.executable, "-m", "qlevents", "events"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert done.stderr.endswith("Error: a command is required: export, tail, prune\n")
