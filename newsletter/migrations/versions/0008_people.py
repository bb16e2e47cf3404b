"""people: imports table, suppression hashes, erasure time, subscribers-table indexes

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-29 23:50:00
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("suppressions") as batch:
        batch.alter_column("email", existing_type=sa.String(length=320), nullable=True)
        batch.add_column(sa.Column("email_hash", sa.String(length=64), nullable=True))
        batch.create_index("ix_suppressions_email_hash", ["email_hash"])
    # The same digest as mail/addresses.address_hash (kept here: a migration must not change
    # when the code does).
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, email FROM suppressions")).fetchall()
    for row_id, email in rows:
        digest = hashlib.sha256(email.encode("utf-8")).hexdigest()
        connection.execute(
            sa.text("UPDATE suppressions SET email_hash = :h WHERE id = :i"),
            {"h": digest, "i": row_id},
        )
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(
            sa.Column("erased_at", newsletter.models.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_index("ix_subscribers_created", "subscribers", ["created_at", "id"])
    op.create_index("ix_subscribers_status_created", "subscribers", ["status", "created_at", "id"])
    op.create_index("ix_subscribers_status_email", "subscribers", ["status", "email"])
    op.create_index(
        "ix_subscribers_email_prefix",
        "subscribers",
        ["email"],
        postgresql_ops={"email": "varchar_pattern_ops"},
    )
    op.create_index("ix_deliveries_step_state", "deliveries", ["step_id", "state", "subscriber_id"])
    op.create_index(
        "ix_enrollments_sequence_subscriber", "enrollments", ["sequence_id", "subscriber_id"]
    )
    op.create_table(
        "imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "uploaded",
                "queued",
                "running",
                "done",
                "failed",
                name="import_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("stored_name", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("header", sa.JSON(), nullable=False),
        sa.Column("mapping", sa.JSON(), nullable=False),
        sa.Column(
            "consent",
            sa.Enum(
                "confirm",
                "attest",
                name="import_consent",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=True,
        ),
        sa.Column("sequence_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("rows_read", sa.Integer(), nullable=False),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("suppressed", sa.Integer(), nullable=False),
        sa.Column("invalid", sa.Integer(), nullable=False),
        sa.Column("problems", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", newsletter.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", newsletter.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["sequence_id"],
            ["sequences.id"],
            name=op.f("fk_imports_sequence_id_sequences"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imports")),
    )


def downgrade() -> None:
    op.drop_table("imports")
    op.drop_index("ix_enrollments_sequence_subscriber", table_name="enrollments")
    op.drop_index("ix_deliveries_step_state", table_name="deliveries")
    op.drop_index("ix_subscribers_email_prefix", table_name="subscribers")
    op.drop_index("ix_subscribers_status_email", table_name="subscribers")
    op.drop_index("ix_subscribers_status_created", table_name="subscribers")
    op.drop_index("ix_subscribers_created", table_name="subscribers")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("erased_at")
    op.execute("DELETE FROM suppressions WHERE email IS NULL")
    with op.batch_alter_table("suppressions") as batch:
        batch.drop_index("ix_suppressions_email_hash")
        batch.drop_column("email_hash")
        batch.alter_column("email", existing_type=sa.String(length=320), nullable=False)
