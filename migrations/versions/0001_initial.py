"""The first index schema: events, per-log progress and the clock.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("feature", sa.String, nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("offset", sa.Integer, nullable=False),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("event_id", sa.String, nullable=False),
        sa.Column("event_type", sa.String, nullable=False),
        sa.Column("aggregate_id", sa.String, nullable=False),
        sa.Column("node_id", sa.String, nullable=False),
        sa.Column("lamport", sa.Integer, nullable=False),
        sa.Column("status", sa.String, nullable=False, server_default=sa.text("'pending'")),
        sa.Column("retry_count", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_retry_at", sa.String, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("uq_events_feature_event_id", "events", ["feature", "event_id"], unique=True)
    op.create_index(
        "ix_events_pending",
        "events",
        ["lamport", "event_id"],
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "logs",
        sa.Column("feature", sa.String, primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("lines", sa.Integer, nullable=False),
        sa.Column("head_hash", sa.String, nullable=False),
        sa.Column("tail_offset", sa.Integer, nullable=False),
        sa.Column("tail_hash", sa.String, nullable=False),
        sa.Column("max_lamport", sa.Integer, nullable=False),
        sa.Column("file_id", sa.String, nullable=False),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_table("logs")
    op.drop_index("ix_events_pending", table_name="events")
    op.drop_index("uq_events_feature_event_id", table_name="events")
    op.drop_table("events")
