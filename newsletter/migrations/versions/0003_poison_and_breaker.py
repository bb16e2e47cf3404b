"""reaps per delivery, stop reason per enrollment, bounce breaker trips

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("reaps", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("stop_reason", sa.String(length=32), nullable=True))
    op.create_table(
        "breaker_trips",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("tripped_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resumed_at", newsletter.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_breaker_trips")),
    )


def downgrade() -> None:
    op.drop_table("breaker_trips")
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("stop_reason")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("reaps")
