"""Fixtures of the command-line tests: run ``qlevents`` in process and capture what it printed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qlevents.cli import main

#: ``cli("accounts", "list")`` -> (exit code, stdout, stderr)
RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run ``qlevents ARGV...`` through ``main``; return its exit code, stdout and stderr."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
