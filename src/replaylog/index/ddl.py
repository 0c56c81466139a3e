"""The index schema at its head revision as plain DDL (SPEC section 4), for ``sqlite3``.

A new index is made from these statements, without importing Alembic and SQLAlchemy,
which take longer than the whole first append; :mod:`replaylog.index.schema` declares
the same tables for Alembic and for queries, and a test checks that both agree.
"""

from __future__ import annotations

__all__ = ["INDEX_NAMES", "INDEX_SQL", "SCHEMA_SQL", "TABLES"]

#: The schema at HEAD_REVISION exactly as the Alembic migrations create it (a test
#: compares the two), so that a new index is made without importing Alembic and
#: SQLAlchemy, which take longer than the whole first append.
SCHEMA_SQL = (
    (
        "CREATE TABLE alembic_version (\n\t"
        "version_num VARCHAR(32) NOT NULL, \n\t"
        "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)"
    ),
    (
        "CREATE TABLE events (\n\t"
        "id INTEGER NOT NULL, \n\t"
        "feature VARCHAR NOT NULL, \n\t"
        "line INTEGER NOT NULL, \n\t"
        '"offset" INTEGER NOT NULL, \n\t'
        "length INTEGER NOT NULL, \n\t"
        "event_id VARCHAR NOT NULL, \n\t"
        "event_type VARCHAR NOT NULL, \n\t"
        "aggregate_id VARCHAR NOT NULL, \n\t"
        "node_id VARCHAR NOT NULL, \n\t"
        "lamport INTEGER NOT NULL, \n\t"
        "status VARCHAR DEFAULT 'pending' NOT NULL, \n\t"
        "retry_count INTEGER DEFAULT 0 NOT NULL, \n\t"
        "last_retry_at VARCHAR, \n\t"
        "last_error TEXT, \n\t"
        "PRIMARY KEY (id)\n)"
    ),
    "CREATE UNIQUE INDEX uq_events_feature_event_id ON events (feature, event_id)",
    "CREATE INDEX ix_events_pending ON events (lamport, event_id) WHERE status = 'pending'",
    (
        "CREATE TABLE logs (\n\t"
        "feature VARCHAR NOT NULL, \n\t"
        "size INTEGER NOT NULL, \n\t"
        "lines INTEGER NOT NULL, \n\t"
        "head_hash VARCHAR NOT NULL, \n\t"
        "tail_offset INTEGER NOT NULL, \n\t"
        "tail_hash VARCHAR NOT NULL, \n\t"
        "max_lamport INTEGER NOT NULL, \n\t"
        # Added by migration 0002: SQLite's ALTER TABLE writes it on the same line.
        "file_id VARCHAR NOT NULL, prefix_crc INTEGER, \n\t"
        "PRIMARY KEY (feature)\n)"
    ),
    (
        "CREATE TABLE meta (\n\t"
        '"key" VARCHAR NOT NULL, \n\t'
        "value INTEGER NOT NULL, \n\t"
        'PRIMARY KEY ("key")\n)'
    ),
    (
        "CREATE TABLE remembered (\n\t"
        "feature VARCHAR NOT NULL, \n\t"
        "event_id VARCHAR NOT NULL, \n\t"
        "status VARCHAR NOT NULL, \n\t"
        "retry_count INTEGER NOT NULL, \n\t"
        "last_retry_at VARCHAR, \n\t"
        "last_error TEXT, \n\t"
        "PRIMARY KEY (feature, event_id)\n)"
    ),
)


#: The statements of SCHEMA_SQL that create indexes (a rebuild runs them after loading).
INDEX_SQL = tuple(sql for sql in SCHEMA_SQL if sql.startswith(("CREATE INDEX", "CREATE UNIQUE")))
INDEX_NAMES = ("uq_events_feature_event_id", "ix_events_pending")

#: The tables of :data:`replaylog.index.schema.metadata` (not imported here, to keep
#: SQLAlchemy off the append path); a test checks that both agree.
TABLES = frozenset({"events", "logs", "meta", "remembered"})
