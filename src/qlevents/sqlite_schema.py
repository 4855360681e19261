"""Versioned SQLite schemas: each database file records its version (``PRAGMA user_version``).

A database's schema is a list of migrations; migration *i* takes version *i* to *i + 1*.
Opening a file applies the missing ones in one transaction, so an older data directory is
upgraded in place by a newer qlevents, and a file written by a newer qlevents (a version
this one does not know) is refused rather than misread. Version 0 is a new file, or one
made before versions were recorded (release 0.1.0): the first migration of each schema
uses ``IF NOT EXISTS`` so that it fits both.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeAlias

from qlevents._exceptions import QleventsError

#: A migration: SQL statements, or a function of the connection for what SQL cannot say
#: alone (a column that older files may or may not have).
Migration: TypeAlias = "str | Callable[[sqlite3.Connection], None]"


class SchemaVersionError(QleventsError):
    """A database file was written by a newer qlevents than this one."""


def version_of(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def check_readable(conn: sqlite3.Connection, what: str, latest: int) -> None:
    """Refuse to read a file written by a newer qlevents (a reader migrates nothing)."""
    found = version_of(conn)
    if found > latest:
        raise SchemaVersionError(_newer(what, found, latest))


def _newer(what: str, found: int, latest: int) -> str:
    return (
        f"{what} has schema version {found}, written by a newer qlevents; this one knows"
        f" versions up to {latest}. Run the newer qlevents, or restore a backup made by"
        " this version."
    )


def migrate(conn: sqlite3.Connection, what: str, migrations: Sequence[Migration]) -> int:
    """Bring the database of ``conn`` (in autocommit mode) to ``len(migrations)``; return the
    version it had. ``what`` names the file in errors."""
    latest = len(migrations)
    if version_of(conn) == latest:  # the usual case: no write lock taken
        return latest
    conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
    try:
        found = version_of(conn)
        if found > latest:
            raise SchemaVersionError(_newer(what, found, latest))
        for step in migrations[found:]:
            if callable(step):
                step(conn)
                continue
            for statement in _statements(step):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {latest}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def _statements(script: str) -> list[str]:
    """The statements of ``script`` (``executescript`` would commit the open transaction)."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):  # not a ";" inside a string or a trigger
            if pending.strip(" \t\r\n;"):
                statements.append(pending.strip())
            pending = ""
    return statements
