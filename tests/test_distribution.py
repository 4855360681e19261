"""The wheel a shop installs: built, installed without the server extra into a fresh virtual
environment, it imports, sends events to a real server, and ``qlevents send`` runs.

Offline: the wheel is built without build isolation (hatchling is in the dev extra), and the
SDK's dependencies are the dev environment's own, made visible to the fresh one by a ``.pth``
file; ``pip install --no-index`` still resolves the wheel's requirements against them, so a
dependency missing from ``pyproject.toml`` fails here. ``make dist`` builds both
distributions the ordinary way and checks them with twine.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from tests.support import RunningServer, view

REPO = Path(__file__).resolve().parent.parent


def run(*argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def base_requirements(metadata: str) -> list[Requirement]:
    """The Requires-Dist of a METADATA file that no extra asks for."""
    requirements = [
        Requirement(line.split(":", 1)[1].strip())
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def link_closure(requirements: list[Requirement], into: Path) -> set[str]:
    """Symlink the installed distributions ``requirements`` need, recursively, into ``into``;
    return their names."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in seen:
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(requirement.name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            target = into / top
            if not target.exists():
                target.symlink_to(Path(str(dist.locate_file(top))))
        todo.extend(
            r
            for r in map(Requirement, dist.requires or [])
            if r.marker is None or r.marker.evaluate({"extra": ""})
        )
    return seen


def test_the_wheel_installs_without_the_server_extra_and_sends(
    server: RunningServer, tmp_path: Path
) -> None:
    """Wheel -> fresh venv (base dependencies only) -> Client and qlevents send both store."""
    run(
        sys.executable, "-m", "build", "--wheel", "--no-isolation",
        "--outdir", tmp_path / "dist", REPO,
    )  # fmt: skip
    [wheel] = (tmp_path / "dist").glob("qlevents-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requirements = base_requirements(archive.read(metadata).decode())
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(r.name for r in requirements) == sorted(Requirement(d).name for d in declared)

    fresh = tmp_path / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", fresh)
    python = fresh / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    deps = tmp_path / "deps"
    deps.mkdir()
    linked = link_closure(requirements, deps)
    assert not linked & {"uvicorn", "starlette", "prometheus-client", "jinja2"}
    (site / "sdk-deps.pth").write_text(f"{deps}\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index", wheel)

    # Nothing of the checkout: no PYTHONPATH, and not its directory (python -c puts the
    # current directory first on sys.path).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QLEVENTS_ENDPOINT")}
    sent = run(
        python,
        "-c",
        """
import importlib.util, sys
import qlevents
from qlevents import Client
assert qlevents.__file__.startswith(sys.prefix), qlevents.__file__
assert importlib.util.find_spec("uvicorn") is None  # no server extra
with Client(sys.argv[1], sys.argv[2]) as client:
    for i in range(3):
        client.view(product_id=f"wheel{i}", price=1, permalink="https://s.example/")
    result = client.flush(20)
print(bool(result), result.stored)
""",
        server.client_key,
        server.events_url,
        env=env,
        cwd=tmp_path,
    )
    assert sent.split() == ["True", "3"]
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(view(server.client_key, product_id="backfill")) + "\n")
    qlevents = fresh / "bin" / "qlevents"
    out = run(qlevents, "send", events, "--endpoint", server.events_url, env=env, cwd=tmp_path)
    assert "1 processed, 0 failed (1 request)." in out
    stored = sorted(e["product_id"] for e in server.stored())
    assert stored == ["backfill", "wheel0", "wheel1", "wheel2"]


def test_the_docs_list_exactly_the_sdks_dependencies() -> None:
    """README and docs/sdk.md name, on their **Dependencies** line, the packages of
    pyproject's base dependencies: no more, no fewer."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = sorted(Requirement(d).name for d in declared)
    for doc in ("README.md", "docs/sdk.md"):
        text = (REPO / doc).read_text()
        paragraph = text[text.index("**Dependencies**") :].split("\n\n", 1)[0]
        listed = sorted(set(re.findall(r"`([a-z0-9_.-]+)`", paragraph)))
        assert listed == names, doc
