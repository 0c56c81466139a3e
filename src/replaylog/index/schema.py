"""The index schema (SPEC section 4), defined with SQLAlchemy for Alembic and for queries.

``queue.db`` is a cache of the logs. It holds, per event, where its line is and its
delivery state; per log, how far it has been indexed; the Lamport clock; and the delivery
state of events whose log is absent for now.
Migrations in ``migrations/versions`` create exactly these tables, and
:data:`replaylog.index.sql.SCHEMA_SQL` holds them as plain DDL; tests check that all agree.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

__all__ = ["events", "logs", "meta", "metadata", "remembered"]

metadata = MetaData()

#: One row per distinct event of a log (identical duplicate lines are indexed once).
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("feature", String, nullable=False),
    Column("line", Integer, nullable=False),  # 1-based physical line number in the log
    Column("offset", Integer, nullable=False),  # byte offset of the line, to read it back
    Column("length", Integer, nullable=False),  # bytes of the line without its newline
    Column("event_id", String, nullable=False),
    Column("event_type", String, nullable=False),
    Column("aggregate_id", String, nullable=False),
    Column("node_id", String, nullable=False),
    Column("lamport", Integer, nullable=False),
    # 'pending', 'delivered' or 'failed', written only by replaylog.index.delivery. (No CHECK
    # constraint: it would double the cost of every insert, and so of rebuild-index.)
    Column("status", String, nullable=False, server_default=text("'pending'")),
    Column("retry_count", Integer, nullable=False, server_default=text("0")),
    Column("last_retry_at", String, nullable=True),
    Column("last_error", Text, nullable=True),
)

# One event per id in a log. An index rather than a table constraint, so that a rebuild
# can load the rows first and build its indexes once, after.
Index("uq_events_feature_event_id", events.c.feature, events.c.event_id, unique=True)
# Replay takes the next batch from this partial index: its cost depends on the number
# of pending events only, never on how many were delivered before.
Index(
    "ix_events_pending",
    events.c.lamport,
    events.c.event_id,
    sqlite_where=events.c.status == "pending",
)

#: How far each log has been indexed, and what its indexed prefix looked like, so that
#: a rewritten log (checkout, rebase) is told apart from one that only grew.
logs = Table(
    "logs",
    metadata,
    Column("feature", String, primary_key=True),
    Column("size", Integer, nullable=False),  # bytes indexed: the end of the last whole line
    Column("lines", Integer, nullable=False),  # physical lines in those bytes
    Column("head_hash", String, nullable=False),  # sha256 of the first 64 KiB indexed
    Column("tail_offset", Integer, nullable=False),  # where the last indexed line starts
    Column("tail_hash", String, nullable=False),  # sha256 of that last line
    Column("max_lamport", Integer, nullable=False),
    Column("file_id", String, nullable=False),  # "inode:mtime_ns:size" when last seen
    # CRC-32 of every byte indexed, extended as bytes are taken in, so that an edit
    # anywhere in them is noticed; NULL for a log indexed before revision 0002.
    Column("prefix_crc", Integer, nullable=True),
)

#: The delivery state of events that are not in the index for now (their log is gone
#: for a while: a checkout of an older commit, a command run with another --logs-dir).
#: It is given back when the event is indexed again, and dropped only by
#: ``rebuild-index --reset-delivery``.
remembered = Table(
    "remembered",
    metadata,
    Column("feature", String, primary_key=True),
    Column("event_id", String, primary_key=True),
    Column("status", String, nullable=False),
    Column("retry_count", Integer, nullable=False),
    Column("last_retry_at", String, nullable=True),
    Column("last_error", Text, nullable=True),
)

#: Key/value pairs; ``lamport`` is the clock: the largest value issued or seen.
meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Integer, nullable=False),
)
