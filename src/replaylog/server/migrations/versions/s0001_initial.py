"""The receiver's first schema: events per project, conflicts, idempotency keys.

Revision ID: s0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "s0001"
down_revision = None
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String, nullable=False),
        sa.Column("event_id", sa.String, nullable=False),
        sa.Column("feature", sa.String, nullable=False),
        sa.Column("node_id", sa.String, nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.UniqueConstraint("project", "event_id", name="uq_events_project_event_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_project_feature_seq", "events", ["project", "feature", "seq"])
    op.create_table(
        "conflicts",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String, nullable=False),
        sa.Column("event_id", sa.String, nullable=False),
        sa.Column("feature", sa.String, nullable=False),
        sa.Column("node_id", sa.String, nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("line_hash", sa.String, nullable=False),
        sa.UniqueConstraint("project", "event_id", "line_hash", name="uq_conflicts_content"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("project", sa.String, primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("body_hash", sa.String, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("conflicts")
    op.drop_index("ix_events_project_feature_seq", table_name="events")
    op.drop_table("events")
