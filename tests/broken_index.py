"""Ways to break a queue.db, shared by the index and bad-input tests.

Each takes the path of a working index (or of none yet, for ``newer_revision``) and
leaves there a file that replaylog must refuse with an error naming rebuild-index.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

from replaylog.index import HEAD_REVISION, Index


def _run(path: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(statement, params if "?" in statement else ())
        conn.commit()
    finally:
        conn.close()


def newer_revision(path: Path) -> None:
    """Stamped by a replaylog from the future."""
    Index(str(path)).close()
    _run(path, "UPDATE alembic_version SET version_num = 'ffff_from_the_future'")


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(1).randbytes(16 * 1024))


def truncated_to_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncated_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:50])


def foreign_schema(path: Path) -> None:
    """Another application's SQLite database."""
    path.unlink()
    _run(
        path,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
        "INSERT INTO users (name) VALUES ('ada')",
    )


def foreign_alembic_schema(path: Path) -> None:
    """Another application's Alembic database whose revision id happens to be ours."""
    path.unlink()
    _run(
        path,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES (?)",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
        params=(HEAD_REVISION,),
    )


BREAKAGES: dict[str, Callable[[Path], None]] = {
    "newer-revision": newer_revision,
    "random-bytes": random_bytes,
    "truncated": truncated_to_half,
    "truncated-header": truncated_header,
    "foreign-schema": foreign_schema,
    "foreign-alembic-schema": foreign_alembic_schema,
}
