"""pauses: held deliveries, paused enrollments, resends, sequence status; one open enrollment

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-29 23:59:00

The enum CHECK constraints change, so SQLite recreates deliveries, enrollments and sequences
in batch mode; env.py turns foreign keys off while it does, so no child row is lost (the
test_holds_migration tests count every table before and after, on SQLite and PostgreSQL).
The unique (subscriber, sequence) pair of enrollments becomes a partial unique index over the
open ones (pending, active, paused), so a restart can open a new enrollment beside the
stopped one whose history stays.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


DELIVERY_STATES = ("scheduled", "claimed", "sent", "retry", "failed", "skipped")
DELIVERY_KINDS = ("step", "confirm")
ENROLLMENT_STATUSES = ("pending", "active", "completed", "stopped")
OPEN_ENROLLMENTS = "status IN ('pending', 'active', 'paused')"


def _recreate() -> Literal["always", "auto"]:
    """SQLite changes a CHECK constraint only by copying the table; PostgreSQL alters it."""
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def _swap(
    batch: object, column: str, name: str, old: tuple[str, ...], new: tuple[str, ...]
) -> None:
    """Swap the CHECK constraint of an enum column (on SQLite the batch recreates the table)."""
    batch.alter_column(  # type: ignore[attr-defined]
        column, existing_type=_enum(name, *old), type_=_enum(name, *new), existing_nullable=False
    )


def upgrade() -> None:
    with op.batch_alter_table("sequences", recreate=_recreate()) as batch:
        batch.add_column(
            sa.Column(
                "status",
                _enum("sequence_status", "draft", "active", "paused"),
                nullable=False,
                server_default="active",
            )
        )
    with op.batch_alter_table("deliveries", recreate=_recreate()) as batch:
        _swap(batch, "state", "delivery_state", DELIVERY_STATES, (*DELIVERY_STATES, "held"))
        _swap(batch, "kind", "delivery_kind", DELIVERY_KINDS, (*DELIVERY_KINDS, "resend"))
    with op.batch_alter_table("enrollments", recreate=_recreate()) as batch:
        _swap(
            batch,
            "status",
            "enrollment_status",
            ENROLLMENT_STATUSES,
            (*ENROLLMENT_STATUSES, "paused"),
        )
        batch.drop_constraint(op.f("uq_enrollments_subscriber_id"), type_="unique")
    op.create_index(
        "uq_enrollments_open",
        "enrollments",
        ["subscriber_id", "sequence_id"],
        unique=True,
        sqlite_where=sa.text(OPEN_ENROLLMENTS),
        postgresql_where=sa.text(OPEN_ENROLLMENTS),
    )


def downgrade() -> None:
    op.drop_index("uq_enrollments_open", table_name="enrollments")
    with op.batch_alter_table("enrollments", recreate=_recreate()) as batch:
        _swap(
            batch,
            "status",
            "enrollment_status",
            (*ENROLLMENT_STATUSES, "paused"),
            ENROLLMENT_STATUSES,
        )
        batch.create_unique_constraint(
            op.f("uq_enrollments_subscriber_id"), ["subscriber_id", "sequence_id"]
        )
    with op.batch_alter_table("deliveries", recreate=_recreate()) as batch:
        _swap(batch, "state", "delivery_state", (*DELIVERY_STATES, "held"), DELIVERY_STATES)
        _swap(batch, "kind", "delivery_kind", (*DELIVERY_KINDS, "resend"), DELIVERY_KINDS)
    with op.batch_alter_table("sequences", recreate=_recreate()) as batch:
        batch.drop_constraint(op.f("ck_sequences_sequence_status"), type_="check")
        batch.drop_column("status")
