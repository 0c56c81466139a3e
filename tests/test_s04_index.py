"""SPEC section 4 (and the index file of section 1): opening ``queue.db``, its Alembic migrations,
its defences, and a new index's schema (``SCHEMA_SQL``) equal to what the migrations create.

Every test works on real SQLite files under ``tmp_path``. Alembic is driven through its
own API (``command.upgrade``/``stamp``) and once as the ``alembic`` command, so that the
schema replaylog makes by itself is the one a developer gets by hand.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from broken_index import BREAKAGES, newer_revision
from sqlalchemy import create_engine

from replaylog import BadIndexError, EventStore
from replaylog.index import HEAD_REVISION, REVISIONS, Index, find_migrations, run_migrations, schema
from replaylog.index.sql import TABLES as _TABLES

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
REBUILD_HINT = "replaylog rebuild-index"


# --------------------------------------------------------------------------- helpers


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", find_migrations())
    return config


def alembic_on(path: Path, action: str, revision: str) -> None:
    """Run ``alembic upgrade|stamp <revision>`` on the SQLite file at ``path``."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision)
            connection.commit()
    finally:
        engine.dispose()


def revision_of(path: Path) -> str | None:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def tables_of(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def schema_sql(path: Path) -> list[tuple[str, str, str]]:
    """Every table and index of the file with its SQL, sorted, for comparing two schemas."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
    finally:
        conn.close()
    return sorted(rows)


def assert_at_head_with_schema(index: Index) -> None:
    assert index._revision(index.conn)[0] == HEAD_REVISION
    assert set(schema.metadata.tables) <= tables_of(index.conn)
    # The migrations create exactly what schema.py declares: no missing column or index.
    engine = create_engine(f"sqlite:///{index.path}")
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), schema.metadata)
    finally:
        engine.dispose()
    assert diff == []


def make_store_with_events(root: Path) -> EventStore:
    root.mkdir(parents=True, exist_ok=True)  # the store refuses a root that does not exist
    store = EventStore(root, fsync=False)
    store.append("feat-a", "Created", "WP01", {"n": 1})
    store.append("feat-b", "Created", "WP02", {"n": 2})
    store.close()
    return store


@pytest.fixture
def index_file(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / ".replaylog" / "queue.db"


# --------------------------------------------------------------------------- revisions


def test_revisions_list_every_migration_in_order() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    walked = [rev.revision for rev in script.walk_revisions()]  # head first
    assert tuple(reversed(walked)) == REVISIONS
    assert script.get_current_head() == HEAD_REVISION == REVISIONS[-1]
    files = [
        name
        for name in os.listdir(os.path.join(find_migrations(), "versions"))
        if name.endswith(".py") and not name.startswith("__")
    ]
    assert len(files) == len(REVISIONS)


def test_index_knows_the_tables_of_the_schema() -> None:
    assert set(schema.metadata.tables) == _TABLES


def test_opening_an_empty_file_creates_the_schema_at_head(index_file: Path) -> None:
    index_file.parent.mkdir()
    index_file.write_bytes(b"")
    index = Index(str(index_file))
    try:
        assert_at_head_with_schema(index)
        assert index.clock() == 0
    finally:
        index.close()


def test_opening_a_missing_file_creates_the_schema_at_head(index_file: Path) -> None:
    index = Index(str(index_file))
    try:
        assert_at_head_with_schema(index)
    finally:
        index.close()


@pytest.mark.parametrize("revision", REVISIONS)
def test_opening_upgrades_an_index_from_every_earlier_revision(
    tmp_path: Path, revision: str
) -> None:
    path = tmp_path / "queue.db"
    alembic_on(path, "upgrade", revision)
    assert revision_of(path) == revision
    index = Index(str(path))
    try:
        assert_at_head_with_schema(index)
    finally:
        index.close()
    # A second open finds it up to date and changes nothing.
    before = schema_sql(path)
    Index(str(path)).close()
    assert schema_sql(path) == before


@pytest.mark.parametrize("revision", REVISIONS)
def test_upgrade_keeps_events_and_clock_of_an_older_index(tmp_path: Path, revision: str) -> None:
    """An index written at an older revision keeps its rows when opened by this version."""
    root = tmp_path / "proj"
    store = make_store_with_events(root)
    path = Path(store.index_path)
    with EventStore(root, fsync=False) as s:
        s.index.conn.execute("UPDATE events SET status = 'delivered' WHERE feature = 'feat-a'")
        before = s.status()
    # Taken back to the older revision by its own downgrade, as an older replaylog left it.
    alembic_on(path, "downgrade", revision)
    assert revision_of(path) == revision
    with EventStore(root, fsync=False) as s:
        assert s.status() == before
        assert s.index._revision(s.index.conn)[0] == HEAD_REVISION


def test_alembic_command_line_makes_the_same_schema_as_opening_an_index(tmp_path: Path) -> None:
    by_hand = tmp_path / "q.db"
    result = subprocess.run(
        [str(VENV_BIN / "alembic"), "-x", f"index={by_hand}", "upgrade", "head"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert revision_of(by_hand) == HEAD_REVISION
    by_index = tmp_path / "other" / "queue.db"
    Index(str(by_index)).close()
    assert schema_sql(by_hand) == schema_sql(by_index)
    # And replaylog takes the hand-made index as it is.
    index = Index(str(by_hand))
    try:
        assert_at_head_with_schema(index)
    finally:
        index.close()


# --------------------------------------------------------------------------- bad indexes


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_unusable_index_names_rebuild_index_and_rebuild_fixes_it(
    tmp_path: Path, breakage: str
) -> None:
    root = tmp_path / "proj"
    store = make_store_with_events(root)
    path = Path(store.index_path)
    with EventStore(root, fsync=False) as s:
        expected = s.status()
    # Grow the index past a few pages, so that cutting it in half loses real data.
    with EventStore(root, fsync=False) as s:
        s.append_many("feat-c", [{"event_type": "T", "aggregate_id": "x" * 150}] * 200)
        expected = s.status()
    BREAKAGES[breakage](path)

    with pytest.raises(BadIndexError, match=REBUILD_HINT) as info:
        Index(str(path))
    assert str(path) in str(info.value)
    with EventStore(root, fsync=False) as s, pytest.raises(BadIndexError, match=REBUILD_HINT):
        s.status()

    with EventStore(root, fsync=False) as s:
        assert s.rebuild_index() == {"features": 3, "events": expected["totals"]["events"]}
        assert s.status() == expected
        s.append("feat-a", "After", "WP01")
        assert s.status()["features"]["feat-a"]["events"] == 2


def test_newer_index_error_says_it_is_from_a_newer_version(index_file: Path) -> None:
    newer_revision(index_file)
    with pytest.raises(BadIndexError, match="newer") as info:
        Index(str(index_file))
    assert REBUILD_HINT in str(info.value)
    # The index from the future is left as it was for the newer version to use.
    assert revision_of(index_file) == "ffff_from_the_future"


# --------------------------------------------------------------------------- the file


def test_index_file_is_private_and_ignored_by_git(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    store = make_store_with_events(root)
    path = Path(store.index_path)
    assert path == root / ".replaylog" / "queue.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (root / ".replaylog" / ".gitignore").read_text().strip() == "*"
    with EventStore(root, fsync=False) as s:
        s.status()
        wal = Path(str(path) + "-wal")
        if wal.exists():
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600
        s.rebuild_index()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_index_file_is_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Index(str(tmp_path / ".replaylog" / "queue.db")).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / ".replaylog" / "queue.db").stat().st_mode) == 0o600


def test_gitignore_is_written_once_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / ".replaylog").mkdir()
    ignore = tmp_path / ".replaylog" / ".gitignore"
    ignore.write_text("*\n# mine\n")
    Index(str(tmp_path / ".replaylog" / "queue.db")).close()
    assert ignore.read_text() == "*\n# mine\n"


def test_index_elsewhere_gets_no_gitignore(tmp_path: Path) -> None:
    Index(str(tmp_path / "cache" / "q.db")).close()
    assert not (tmp_path / "cache" / ".gitignore").exists()


def test_index_runs_in_wal_mode(tmp_path: Path) -> None:
    index = Index(str(tmp_path / "queue.db"))
    try:
        assert index.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        index.close()
    # Also after a rebuild, which leaves a single self-contained file behind.
    root = tmp_path / "proj"
    make_store_with_events(root)
    with EventStore(root, fsync=False) as s:
        s.rebuild_index()
        assert s.index.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


_NO_ALEMBIC = """
import sys
from replaylog.index import Index
from replaylog.store import EventStore
Index(sys.argv[1]).close()
with EventStore(sys.argv[2], fsync=False) as store:
    store.append("feat-a", "Again", "WP01")
    append_only = sorted(m for m in sys.modules if m.split(".")[0] in ("alembic", "sqlalchemy"))
    store.status()
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "alembic")
print(__import__("json").dumps({"append": append_only, "after_status": loaded}))
"""


def test_opening_an_up_to_date_index_does_not_import_alembic(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    store = make_store_with_events(root)
    result = subprocess.run(
        [sys.executable, "-c", _NO_ALEMBIC, store.index_path, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    # Appending uses sqlite3 only; status uses SQLAlchemy Core, but never Alembic.
    assert modules == {"append": [], "after_status": []}


_OPEN_AT_ONCE = """
import os, sys, time
from replaylog.index import Index
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.0005)
index = Index(sys.argv[1])
print(index._revision(index.conn)[0])
index.close()
"""


@pytest.mark.parametrize("attempt", range(2))
def test_processes_creating_a_new_index_at_once_all_succeed(tmp_path: Path, attempt: int) -> None:
    path = tmp_path / ".replaylog" / "queue.db"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AT_ONCE, str(path), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == HEAD_REVISION
    assert revision_of(path) == HEAD_REVISION
    index = Index(str(path))
    try:
        assert_at_head_with_schema(index)
    finally:
        index.close()


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
