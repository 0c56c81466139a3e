"""A new index is created from SCHEMA_SQL, which must equal what the migrations create."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from replaylog.index import HEAD_REVISION, Index, run_migrations


def master(conn: sqlite3.Connection) -> list[tuple[str, str, str, str | None]]:
    return conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid"
    ).fetchall()


def test_new_index_schema_equals_what_the_migrations_create(tmp_path: Path) -> None:
    index = Index(str(tmp_path / "fresh.db"))
    migrated = sqlite3.connect(tmp_path / "migrated.db", isolation_level=None)
    run_migrations(migrated, str(tmp_path / "migrated.db"))
    assert master(index.conn) == master(migrated)
    for conn in (index.conn, migrated):
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (HEAD_REVISION,)
        ]
    index.close()
    migrated.close()


def test_creating_an_index_imports_neither_alembic_nor_sqlalchemy(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from replaylog.index import Index\n"
        f"Index({str(tmp_path / 'q.db')!r}).close()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('alembic', 'sqlalchemy'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
    assert (tmp_path / "q.db").stat().st_size > 0
