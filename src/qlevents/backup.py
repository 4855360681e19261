"""Online backup and restore of a data directory (the embedded store and the account book).

Each SQLite file of the data directory is copied with SQLite's online backup API while the
server keeps writing: the copy is the file as it was at one instant (one read transaction
in WAL mode, so the writer is never blocked), and therefore holds every event that was
acknowledged before the backup began. A ``MANIFEST.json`` beside the copies records what
was copied, when, and each file's schema version; ``restore`` checks it before it copies
anything back.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qlevents._exceptions import QleventsError
from qlevents._version import __version__
from qlevents.sqlite_schema import version_of

MANIFEST: Final = "MANIFEST.json"
#: The data directory's databases, in the order they are copied: the events first, the
#: account book last, so that every event in the copy has its account in it too (accounts
#: are never deleted, so a later copy of the book holds every earlier one's).
DATABASES: Final = ("events.sqlite3", "activity.sqlite3", "accounts.sqlite3")


class BackupError(QleventsError):
    """A backup or a restore cannot be made; nothing was changed."""


@dataclass(frozen=True, slots=True)
class BackedUp:
    """One file of a backup."""

    name: str
    bytes: int
    schema_version: int


def backup(data_dir: Path, dest: Path) -> list[BackedUp]:
    """Copy the databases of ``data_dir`` into the new directory ``dest``, online."""
    if not any((data_dir / name).exists() for name in DATABASES):
        raise BackupError(f"no data directory at {data_dir}: nothing to back up")
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} exists and is not empty; give a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    copied: list[BackedUp] = []
    started = time.time()
    for name in DATABASES:
        source = data_dir / name
        if not source.exists():
            continue
        target = dest / name
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            out = sqlite3.connect(target)
            try:
                # All pages in one step: one read transaction, so the copy is one instant.
                src.backup(out, pages=-1)
                out.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
                version = version_of(out)
            finally:
                out.close()
        finally:
            src.close()
        _fsync(target)
        copied.append(BackedUp(name, target.stat().st_size, version))
    manifest = {
        "qlevents": __version__,
        "started_at": started,
        "finished_at": time.time(),
        "source": str(data_dir.resolve()),
        "files": [
            {"name": c.name, "bytes": c.bytes, "schema_version": c.schema_version} for c in copied
        ],
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _fsync(dest / MANIFEST)
    _fsync(dest)
    return copied


def restore(source: Path, data_dir: Path, *, force: bool = False) -> list[str]:
    """Copy a backup made by :func:`backup` into ``data_dir`` (which no server may be using).

    Refuses a directory without a manifest, a manifest naming a missing file, and a data
    directory that already holds databases unless ``force``.
    """
    try:
        manifest = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
        names = [entry["name"] for entry in manifest["files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{source} is not a qlevents backup (no readable {MANIFEST})") from exc
    missing = [n for n in names if not (source / n).exists() or n not in DATABASES]
    if missing:
        raise BackupError(f"the backup in {source} lacks {', '.join(missing)}")
    present = [n for n in DATABASES if (data_dir / n).exists()]
    if present and not force:
        raise BackupError(
            f"{data_dir} already holds {', '.join(present)}; stop its server and restore"
            " into a new directory, or pass --force to replace them"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in DATABASES:  # a replaced file's WAL must not be replayed onto the copy
        for suffix in ("", "-wal", "-shm"):
            (data_dir / (name + suffix)).unlink(missing_ok=True)
    for name in names:
        partial = data_dir / (name + ".restoring")
        shutil.copyfile(source / name, partial)
        _fsync(partial)
        os.replace(partial, data_dir / name)
    _fsync(data_dir)
    return names


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
