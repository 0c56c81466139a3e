"""Delivery state that outlives its events' absence, and a CRC of every indexed byte.

``remembered`` keeps the delivery state of events whose log is gone for now (a checkout
of an older commit, another ``--logs-dir``) until they are indexed again.
``logs.prefix_crc`` is the CRC-32 of every byte indexed of a log, so that an edit
anywhere in it is noticed; it is NULL for logs indexed before it was kept, which are
indexed again on their next change.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("logs", sa.Column("prefix_crc", sa.Integer, nullable=True))
    op.create_table(
        "remembered",
        sa.Column("feature", sa.String, nullable=False),
        sa.Column("event_id", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("retry_count", sa.Integer, nullable=False),
        sa.Column("last_retry_at", sa.String, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("feature", "event_id"),
    )


def downgrade() -> None:
    op.drop_table("remembered")
    with op.batch_alter_table("logs") as batch:
        batch.drop_column("prefix_crc")
