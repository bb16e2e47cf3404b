"""send window per sequence; first due and attempt times per delivery

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sequences") as batch:
        batch.add_column(
            sa.Column("send_end_hour", sa.Integer(), nullable=False, server_default="21")
        )
        batch.add_column(
            sa.Column("send_days", sa.String(length=7), nullable=False, server_default="1234567")
        )
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column("first_due_at", newsletter.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("attempted_at", newsletter.models.UTCDateTime(timezone=True), nullable=True)
        )
    op.execute("UPDATE deliveries SET first_due_at = due_at WHERE first_due_at IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("attempted_at")
        batch.drop_column("first_due_at")
    with op.batch_alter_table("sequences") as batch:
        batch.drop_column("send_days")
        batch.drop_column("send_end_hour")
