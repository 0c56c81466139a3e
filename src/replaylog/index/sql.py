"""Every SQL statement the index (``queue.db``, SPEC section 4) runs through ``sqlite3``:
its schema at the head revision as plain DDL, its PRAGMAs and transaction statements,
and the queries of opening, catch-up, the clock, remembered delivery state and rebuild.

They are raw ``sqlite3`` rather than SQLAlchemy Core because the append, catch-up and
rebuild hot paths must not load SQLAlchemy, whose import alone takes longer than a whole
append (tests check that those paths never import it). The Core queries of
:mod:`replaylog.index.delivery` are built on the tables of :mod:`replaylog.index.schema`,
which declares the same tables for Alembic; a test checks that both agree.
"""

from __future__ import annotations

__all__ = [
    "ALEMBIC_REVISION",
    "BEGIN_IMMEDIATE",
    "BUSY_TIMEOUT",
    "COMMIT",
    "DELETE_EVENTS",
    "DELETE_LOG",
    "DELIVERY_STATES",
    "DROP_INDEX_SQL",
    "EMITTED_STATUS",
    "FORGET_PROGRESS",
    "FORGET_RESTORED",
    "FORGET_RESTORED_OF_FEATURE",
    "HAS_REMEMBERED",
    "HAS_REMEMBERED_OF_FEATURE",
    "INDEX_NAMES",
    "INDEX_SQL",
    "INSERT_EVENT",
    "JOURNAL_DELETE",
    "JOURNAL_OFF",
    "JOURNAL_WAL",
    "KNOWN_FEATURES",
    "LIST_TABLES",
    "LOG_FILE_ID",
    "LOG_PROGRESS",
    "PROGRESS",
    "CLOCK_KEY",
    "RECORDED_CLOCK",
    "RECORD_CLOCK",
    "SET_CLOCK_KEY",
    "RELEASE_CLEAN_INGEST",
    "RELEASE_ONE_LOG",
    "REMEMBER_FEATURE",
    "REMEMBER_STATES",
    "RESTORE",
    "RESTORE_OF_FEATURE",
    "ROLLBACK",
    "ROLLBACK_TO_CLEAN_INGEST",
    "ROLLBACK_TO_ONE_LOG",
    "SAVEPOINT_CLEAN_INGEST",
    "SAVEPOINT_ONE_LOG",
    "SAVE_PROGRESS",
    "SCHEMA_SQL",
    "STAMP_REVISION",
    "SYNCHRONOUS_FULL",
    "SYNCHRONOUS_NORMAL",
    "SYNCHRONOUS_OFF",
    "TABLES",
    "WAL_CHECKPOINT",
    "known_ids_sql",
    "known_lines_sql",
]

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


# ---------------------------------------------------------------- connection, transactions

#: Wait up to a minute for another process's write lock (as ``sqlite3.connect``'s timeout).
BUSY_TIMEOUT = "PRAGMA busy_timeout = 60000"
JOURNAL_WAL = "PRAGMA journal_mode = WAL"
#: The index can always be rebuilt from the logs, so a commit need not wait for the disk.
SYNCHRONOUS_NORMAL = "PRAGMA synchronous = NORMAL"
#: Takes the write lock at once, so that a transaction never fails half way to get it.
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

# ---------------------------------------------------------------- opening

LIST_TABLES = "SELECT name FROM sqlite_master WHERE type='table'"
ALEMBIC_REVISION = "SELECT version_num FROM alembic_version"
#: A new index's revision, as Alembic would stamp it.
STAMP_REVISION = "INSERT INTO alembic_version (version_num) VALUES (?)"

# ---------------------------------------------------------------- the clock

RECORDED_CLOCK = "SELECT value FROM meta WHERE key = 'lamport'"
#: The index's key for its clock file (see Index.clock_file); set once, never changed.
CLOCK_KEY = "SELECT value FROM meta WHERE key = 'clock_key'"
SET_CLOCK_KEY = "INSERT INTO meta (key, value) VALUES ('clock_key', ?) ON CONFLICT(key) DO NOTHING"
#: Raises the recorded clock, never lowers it.
RECORD_CLOCK = (
    "INSERT INTO meta (key, value) VALUES ('lamport', ?) ON CONFLICT(key)"
    " DO UPDATE SET value = max(value, excluded.value)"
)

# ---------------------------------------------------------------- catch-up

#: One row per line taken in (catchup.py knows where each field sits in its rows).
INSERT_EVENT = (
    'INSERT INTO events (feature, line, "offset", length, event_id, event_type,'
    " aggregate_id, node_id, lamport) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: A ``logs`` row, in the field order of ``catchup.LogProgress``.
LOG_PROGRESS = (
    "SELECT size, lines, head_hash, tail_offset, tail_hash, max_lamport, file_id, prefix_crc"
    " FROM logs WHERE feature = ?"
)
SAVE_PROGRESS = (
    "INSERT INTO logs (feature, size, lines, head_hash, tail_offset, tail_hash,"
    " max_lamport, file_id, prefix_crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(feature) DO UPDATE SET size = excluded.size, lines = excluded.lines,"
    " head_hash = excluded.head_hash, tail_offset = excluded.tail_offset,"
    " tail_hash = excluded.tail_hash, max_lamport = excluded.max_lamport,"
    " file_id = excluded.file_id, prefix_crc = excluded.prefix_crc"
)
KNOWN_FEATURES = "SELECT feature FROM logs ORDER BY feature"
#: The quick look of a catch-up: the log's file id when the index last saw it.
LOG_FILE_ID = "SELECT file_id FROM logs WHERE feature = ?"
PROGRESS = "SELECT size, lines, max_lamport FROM logs WHERE feature = ?"
DELETE_EVENTS = "DELETE FROM events WHERE feature = ?"
DELETE_LOG = "DELETE FROM logs WHERE feature = ?"
#: Makes the next catch-up index the log again from its start (no hash matches '').
FORGET_PROGRESS = "UPDATE logs SET head_hash = '', file_id = '-' WHERE feature = ?"
#: Around the fast path of an ingest, undone when a line needs the slow path.
SAVEPOINT_CLEAN_INGEST = "SAVEPOINT clean_ingest"
ROLLBACK_TO_CLEAN_INGEST = "ROLLBACK TO clean_ingest"
RELEASE_CLEAN_INGEST = "RELEASE clean_ingest"


def _marks(count: int) -> str:
    return ",".join("?" * count)


def known_lines_sql(count: int) -> str:
    """Where ``count`` event ids of a feature are indexed: ``event_id, line, "offset"``."""
    return (
        f'SELECT event_id, line, "offset" FROM events WHERE feature = ?'
        f" AND event_id IN ({_marks(count)})"
    )


def known_ids_sql(count: int) -> str:
    """Which of ``count`` event ids of a feature are indexed."""
    return f"SELECT event_id FROM events WHERE feature = ? AND event_id IN ({_marks(count)})"


# ---------------------------------------------------------------- remembered delivery state

_STATE_COLUMNS = "feature, event_id, status, retry_count, last_retry_at, last_error"
# The state worth keeping: a pending event never tried is what indexing it again gives.
_STATE_KEPT = "(status != 'pending' OR retry_count > 0)"
_REMEMBER = (
    f"INSERT INTO remembered ({_STATE_COLUMNS}) {{rows}} ON CONFLICT(feature, event_id)"
    " DO UPDATE SET status = excluded.status, retry_count = excluded.retry_count,"
    " last_retry_at = excluded.last_retry_at, last_error = excluded.last_error"
)
#: Remembered states first, then indexed ones: listed last, those win for an event in both.
DELIVERY_STATES = (
    f"SELECT {_STATE_COLUMNS} FROM remembered UNION ALL"
    f" SELECT {_STATE_COLUMNS} FROM events WHERE {_STATE_KEPT}"
)
REMEMBER_STATES = _REMEMBER.format(rows="VALUES (?, ?, ?, ?, ?, ?)")
#: Keeps the state of a feature's events that are about to be dropped from ``events``.
REMEMBER_FEATURE = _REMEMBER.format(
    rows=f"SELECT {_STATE_COLUMNS} FROM events WHERE feature = ? AND {_STATE_KEPT}"
)


def _restoring(where: str) -> tuple[str, str, str]:
    """Is anything remembered; give it back to indexed events; forget what was given."""
    return (
        f"SELECT 1 FROM remembered AS r WHERE {where} LIMIT 1",
        "UPDATE events SET status = r.status, retry_count = r.retry_count,"
        " last_retry_at = r.last_retry_at, last_error = r.last_error"
        f" FROM remembered AS r WHERE {where} AND r.feature = events.feature"
        " AND r.event_id = events.event_id",
        f"DELETE FROM remembered AS r WHERE {where} AND EXISTS (SELECT 1 FROM events"
        " AS e WHERE e.feature = r.feature AND e.event_id = r.event_id)",
    )


#: Restoring one feature's events (``?``: the feature), and every feature's.
HAS_REMEMBERED_OF_FEATURE, RESTORE_OF_FEATURE, FORGET_RESTORED_OF_FEATURE = _restoring(
    "r.feature = ?"
)
HAS_REMEMBERED, RESTORE, FORGET_RESTORED = _restoring("1")

# ---------------------------------------------------------------- delivery

#: Raw, beside delivery.py's Core queries: one look-up on the replay's own connection.
EMITTED_STATUS = "SELECT status, last_error FROM events WHERE feature = ? AND event_id = ?"

# ---------------------------------------------------------------- rebuild-index

#: Folds an old index's WAL into its file before the new one is renamed over it.
WAL_CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"
#: A rebuild's temporary file is thrown away on any failure: no journal, no syncing.
JOURNAL_OFF = "PRAGMA journal_mode = OFF"
SYNCHRONOUS_OFF = "PRAGMA synchronous = OFF"
#: The indexes are dropped before loading and built once after (INDEX_SQL).
DROP_INDEX_SQL = tuple(f"DROP INDEX {name}" for name in INDEX_NAMES)
#: Around each log, so that a bad one is undone alone.
SAVEPOINT_ONE_LOG = "SAVEPOINT one_log"
ROLLBACK_TO_ONE_LOG = "ROLLBACK TO one_log"
RELEASE_ONE_LOG = "RELEASE one_log"
#: Before the swap: a single self-contained file, written through, with no -wal.
SYNCHRONOUS_FULL = "PRAGMA synchronous = FULL"
JOURNAL_DELETE = "PRAGMA journal_mode = DELETE"
