"""versions of sequences: step keys, soft-removed steps, enrollment versions

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 23:45:00
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_STEP_FIELDS = (
    "subject",
    "preheader",
    "day_offset",
    "body_md",
    "teaser",
    "resources",
    "resources_intro",
)


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("key", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("removed_at", newsletter.models.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
    versions = op.create_table(
        "sequence_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sequence_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "draft",
                "published",
                name="version_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("created_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", newsletter.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("published_by", sa.String(length=320), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["sequence_id"],
            ["sequences.id"],
            name=op.f("fk_sequence_versions_sequence_id_sequences"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sequence_versions")),
        sa.UniqueConstraint("sequence_id", "number", name=op.f("uq_sequence_versions_sequence_id")),
    )
    op.create_index(
        "ix_sequence_versions_one_draft",
        "sequence_versions",
        ["sequence_id"],
        unique=True,
        sqlite_where=sa.text("state = 'draft'"),
        postgresql_where=sa.text("state = 'draft'"),
    )
    _fill(versions)
    with op.batch_alter_table("steps") as batch:
        batch.alter_column("key", existing_type=sa.String(length=32), nullable=False)
        batch.create_unique_constraint("uq_steps_sequence_id_key", ["sequence_id", "key"])


def _fill(versions: sa.Table) -> None:
    """Give every step a key and every sequence its version 1, published, from its steps."""
    bind = op.get_bind()
    meta = sa.MetaData()
    sequences = sa.Table("sequences", meta, autoload_with=bind)
    step_rows = sa.Table("steps", meta, autoload_with=bind)
    now = datetime.now(UTC)
    for step_id in bind.execute(sa.select(step_rows.c.id)).scalars().all():
        bind.execute(
            step_rows.update().where(step_rows.c.id == step_id).values(key=uuid.uuid4().hex)
        )
    for sequence in bind.execute(sa.select(sequences)).mappings().all():
        rows = bind.execute(
            sa.select(step_rows)
            .where(step_rows.c.sequence_id == sequence["id"])
            .order_by(step_rows.c.position)
        ).mappings()
        steps: list[dict[str, Any]] = [
            {"key": row["key"], **{name: row[name] for name in _STEP_FIELDS}} for row in rows
        ]
        for step in steps:
            step["resources"] = step["resources"] or []
            step["preheader"] = step["preheader"] or ""
        snapshot = {
            "steps": steps,
            "settings": {
                "send_hour": sequence["send_hour"],
                "send_end_hour": sequence["send_end_hour"],
                "send_days": sequence["send_days"],
            },
        }
        created = sequence["created_at"] or now
        if created.tzinfo is None:  # SQLite keeps UTC without a zone (models.UTCDateTime)
            created = created.replace(tzinfo=UTC)
        bind.execute(
            versions.insert().values(
                sequence_id=sequence["id"],
                number=1,
                state="published",
                snapshot=snapshot,
                created_at=created,
                published_at=created,
                published_by=None,
                summary=None,
            )
        )


def downgrade() -> None:
    op.drop_index("ix_sequence_versions_one_draft", table_name="sequence_versions")
    op.drop_table("sequence_versions")
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("version")
    with op.batch_alter_table("steps") as batch:
        batch.drop_constraint("uq_steps_sequence_id_key", type_="unique")
        batch.drop_column("removed_at")
        batch.drop_column("key")
