"""docs/operations.md shows the deploy files as they are: each one, whole, in a code block."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
DEPLOY_FILES = sorted(path for path in (ROOT / "deploy").rglob("*") if path.is_file())


def test_there_are_deploy_files() -> None:
    """The nginx site, the systemd unit and its settings, the logrotate rule (at least)."""
    names = {path.relative_to(ROOT).as_posix() for path in DEPLOY_FILES}
    assert names >= {
        "deploy/logrotate/qlevents",
        "deploy/nginx/qlevents.conf",
        "deploy/systemd/qlevents.env",
        "deploy/systemd/qlevents.service",
    }


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda path: path.name)
def test_the_guide_shows_the_file_as_it_is(path: Path) -> None:
    """The file's text is in docs/operations.md, in a fenced block of its own."""
    blocks = OPERATIONS.read_text().split("```")[1::2]  # the inside of each fenced block
    bodies = [block.split("\n", 1)[1] if "\n" in block else "" for block in blocks]
    assert path.read_text() in bodies, f"docs/operations.md does not show {path} as it is"
