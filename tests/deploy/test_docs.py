"""docs/operations.md shows the single node's deploy files as they are: each one, whole, in a
code block; docs/cluster.md names each of the cluster's (their comments explain them)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
CLUSTER = ROOT / "docs" / "cluster.md"
DEPLOY_FILES = sorted(path for path in (ROOT / "deploy").rglob("*") if path.is_file())
CLUSTER_FILES = [path for path in DEPLOY_FILES if "cluster" in path.name or "nats" in path.name]
SINGLE_NODE_FILES = [path for path in DEPLOY_FILES if path not in CLUSTER_FILES]


def test_there_are_deploy_files() -> None:
    """The nginx site, the systemd unit and its settings, the logrotate rule (at least)."""
    names = {path.relative_to(ROOT).as_posix() for path in DEPLOY_FILES}
    assert names >= {
        "deploy/logrotate/qlevents",
        "deploy/nginx/qlevents.conf",
        "deploy/systemd/qlevents.env",
        "deploy/systemd/qlevents.service",
    }


@pytest.mark.parametrize("path", SINGLE_NODE_FILES, ids=lambda path: path.name)
def test_the_guide_shows_the_file_as_it_is(path: Path) -> None:
    """The file's text is in docs/operations.md, in a fenced block of its own."""
    blocks = OPERATIONS.read_text().split("```")[1::2]  # the inside of each fenced block
    bodies = [block.split("\n", 1)[1] if "\n" in block else "" for block in blocks]
    assert path.read_text() in bodies, f"docs/operations.md does not show {path} as it is"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda path: path.name)
def test_the_cluster_guide_names_the_file(path: Path) -> None:
    """docs/cluster.md points to the file by its path in the repository."""
    assert path.relative_to(ROOT).as_posix() in CLUSTER.read_text()
