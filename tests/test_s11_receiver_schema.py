"""SPEC section 11, the receiver's schema: made and upgraded by its own Alembic migrations,
shipped in the package, equal to the tables its SQL uses, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from replaylog import UsageError
from replaylog.errors import ReceiverError
from replaylog.server import Storage
from replaylog.server.storage import HEAD_REVISION, REVISIONS, VERSION_TABLE, find_migrations


def test_the_revision_list_names_every_migration_in_order() -> None:
    folder = os.path.join(find_migrations(), "versions")
    found: dict[str, str | None] = {}
    for name in os.listdir(folder):
        if name.endswith(".py"):
            source = open(os.path.join(folder, name), encoding="utf-8").read()
            rev = re.search(r'^revision = "([^"]+)"', source, re.M)
            down = re.search(r"^down_revision = (None|\"[^\"]+\")", source, re.M)
            assert rev and down, name
            found[rev.group(1)] = None if down.group(1) == "None" else down.group(1).strip('"')
    chain: list[str] = []
    current: str | None = None
    while True:
        nxt = [r for r, d in found.items() if d == current]
        if not nxt:
            break
        chain.append(nxt[0])
        current = nxt[0]
    assert tuple(chain) == REVISIONS


def test_the_migrated_schema_equals_the_tables_the_server_uses(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from replaylog.server.storage import metadata

    storage = Storage(db_url)
    storage.migrate()
    try:
        with storage.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert context.get_current_revision() == HEAD_REVISION
            assert compare_metadata(context, metadata) == []
    finally:
        storage.close()


def test_starting_again_keeps_what_was_stored(db_url: str) -> None:
    from server_fixtures import body, envelope

    from replaylog.server.ingest import parse_batch

    first = Storage(db_url)
    first.migrate()
    first.ingest("default", "n", parse_batch(body([envelope(0)]))[1])
    first.close()
    again = Storage(db_url)
    again.migrate()
    try:
        assert len(again.events_page("default", after=0, limit=10)) == 1
    finally:
        again.close()


def test_a_database_of_a_newer_replaylog_is_refused_naming_the_upgrade(db_url: str) -> None:
    storage = Storage(db_url)
    storage.migrate()
    with storage.engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 's9999'"))
    storage.close()
    again = Storage(db_url)
    try:
        with pytest.raises(ReceiverError, match="newer replaylog.*upgrade replaylog"):
            again.migrate()
    finally:
        again.close()


def test_a_database_holding_foreign_tables_of_those_names_is_refused(db_url: str) -> None:
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE events (id INTEGER, what TEXT)"))
    engine.dispose()
    storage = Storage(db_url)
    try:
        with pytest.raises(ReceiverError, match="did not make"):
            storage.migrate()
    finally:
        storage.close()


@pytest.mark.parametrize("table", ["events", "notes"])
def test_a_sqlite_file_of_another_application_is_refused_and_left_byte_for_byte(
    tmp_path: Path, table: str
) -> None:
    # Refused before the receiver's first connection, which would have switched the
    # file to its own journal mode (kept in the file) even though serve then failed.
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE {table} (id INTEGER, what TEXT)")
    con.execute(f"INSERT INTO {table} VALUES (1, 'keep me')")
    con.commit()
    con.close()
    before = path.read_bytes()
    storage = Storage(f"sqlite:///{path}")
    try:
        with pytest.raises(ReceiverError, match=f"tables the receiver did not make \\({table}\\)"):
            storage.migrate()
    finally:
        storage.close()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_an_unreachable_postgresql_is_an_error_naming_the_database_not_its_password() -> None:
    from server_fixtures import free_port

    url = f"postgresql+psycopg://someone:s3cret-pw@127.0.0.1:{free_port()}/nothing"
    storage = Storage(url, busy_timeout=1.0)
    with pytest.raises(ReceiverError) as info:
        storage.migrate()
    assert "127.0.0.1" in str(info.value) and "s3cret-pw" not in str(info.value)


@pytest.mark.parametrize("url", ["mysql://x@h/db", "not a url at all", "sqlite+nodriver:///x"])
def test_a_database_url_the_server_cannot_use_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError, match="--db"):
        Storage(url)


def test_a_sqlite_file_that_is_not_a_database_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "server.db"
    path.write_bytes(b"this is not a database, but someone's notes" * 100)
    before = path.read_bytes()
    storage = Storage(f"sqlite:///{path}")
    try:
        with pytest.raises(ReceiverError, match="cannot open the receiver's database"):
            storage.migrate()
    finally:
        storage.close()
    assert path.read_bytes() == before
