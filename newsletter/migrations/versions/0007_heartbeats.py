"""the dispatcher's heartbeat, cached figures, and the indexes of the dashboard and funnel

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 23:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "heartbeats",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_heartbeats")),
    )
    op.create_table(
        "cached_figures",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("computed_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_cached_figures")),
    )
    op.create_index("ix_subscribers_created_at", "subscribers", ["created_at"])
    op.create_index("ix_subscribers_confirmed_at", "subscribers", ["confirmed_at"])
    op.create_index("ix_deliveries_sent_at", "deliveries", ["sent_at"])
    op.create_index("ix_enrollments_sequence_created", "enrollments", ["sequence_id", "created_at"])
    op.create_index(
        "ix_deliveries_enrollment_state", "deliveries", ["enrollment_id", "state", "step_id"]
    )
    op.create_index("ix_events_kind", "events", ["kind"])


def downgrade() -> None:
    op.drop_index("ix_events_kind", table_name="events")
    op.drop_index("ix_deliveries_enrollment_state", table_name="deliveries")
    op.drop_index("ix_enrollments_sequence_created", table_name="enrollments")
    op.drop_index("ix_deliveries_sent_at", table_name="deliveries")
    op.drop_index("ix_subscribers_confirmed_at", table_name="subscribers")
    op.drop_index("ix_subscribers_created_at", table_name="subscribers")
    op.drop_table("cached_figures")
    op.drop_table("heartbeats")
