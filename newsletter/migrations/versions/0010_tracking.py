"""tracking: the per-sequence switch, and the first click per link and open per tracked mail

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sequences") as batch:
        # Off for every existing sequence: nothing tracks a reader until an owner says so.
        batch.add_column(
            sa.Column("tracking", sa.Boolean(), nullable=False, server_default=sa.text("false"))
        )
    op.create_table(
        "clicks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("link", sa.Integer(), nullable=False),
        sa.Column("clicked_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_clicks_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clicks")),
        # Also the funnel's way from a delivery to its clicks (its leading column).
        sa.UniqueConstraint("delivery_id", "link", name="uq_clicks_delivery_id_link"),
    )
    op.create_table(
        "opens",
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("opened_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_opens_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_opens")),
    )


def downgrade() -> None:
    op.drop_table("opens")
    op.drop_table("clicks")
    with op.batch_alter_table("sequences") as batch:
        batch.drop_column("tracking")
