"""The versions migration on a database in use: every row kept, keys and versions filled in."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, Table, func, select
from sqlalchemy.engine import Connection

from newsletter.db import make_engine
from newsletter.migrate import alembic_config

TABLES = ("sequences", "steps", "subscribers", "enrollments", "deliveries", "events")


def versions_revision(database_url: str) -> tuple[str, str]:
    """(the versions migration's revision, the one before it), whatever the chain numbers."""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    revision = next(r for r in script.walk_revisions() if r.path.endswith("_versions.py"))
    assert isinstance(revision.down_revision, str)
    return revision.revision, revision.down_revision


def fill(conn: Connection) -> None:
    """Two sequences with people at every place, as a database at the revision before."""
    meta = MetaData()
    t = {name: Table(name, meta, autoload_with=conn) for name in TABLES}
    now = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    for number, slug in enumerate(("first", "second"), start=1):
        sequence_id = conn.execute(
            t["sequences"]
            .insert()
            .values(
                slug=slug,
                title=slug.title(),
                description="",
                is_default=number == 1,
                send_hour=9,
                send_end_hour=21,
                send_days="1234567",
                created_at=now,
            )
            .returning(t["sequences"].c.id)
        ).scalar_one()
        step_ids = [
            conn.execute(
                t["steps"]
                .insert()
                .values(
                    sequence_id=sequence_id,
                    position=position,
                    day_offset=position - 1,
                    subject=f"{slug} part {position}",
                    preheader="",
                    body_md=f"Body {position}",
                    teaser=None,
                    resources=[{"title": "More", "blurb": "", "url": ""}] if position == 3 else [],
                    resources_intro=None,
                    updated_at=now,
                )
                .returning(t["steps"].c.id)
            ).scalar_one()
            for position in (1, 2, 3)
        ]
        for place in range(5):  # not started, waiting on 1, 2, 3, finished
            subscriber_id = conn.execute(
                t["subscribers"]
                .insert()
                .values(
                    email=f"{slug}{place}@example.org",
                    time_zone="UTC",
                    status="active",
                    created_at=now,
                )
                .returning(t["subscribers"].c.id)
            ).scalar_one()
            enrollment_id = conn.execute(
                t["enrollments"]
                .insert()
                .values(
                    subscriber_id=subscriber_id,
                    sequence_id=sequence_id,
                    status="pending" if place == 0 else "completed" if place == 4 else "active",
                    created_at=now,
                    started_at=None if place == 0 else now,
                )
                .returning(t["enrollments"].c.id)
            ).scalar_one()
            for index in range(min(place, 3)):
                sent = index + 1 < place or place == 4
                delivery_id = conn.execute(
                    t["deliveries"]
                    .insert()
                    .values(
                        kind="step",
                        subscriber_id=subscriber_id,
                        enrollment_id=enrollment_id,
                        step_id=step_ids[index],
                        due_at=now + timedelta(days=index),
                        first_due_at=now + timedelta(days=index),
                        state="sent" if sent else "scheduled",
                        attempts=1 if sent else 0,
                        reaps=0,
                        sent_at=now + timedelta(days=index) if sent else None,
                        created_at=now,
                    )
                    .returning(t["deliveries"].c.id)
                ).scalar_one()
                conn.execute(
                    t["events"]
                    .insert()
                    .values(
                        subscriber_id=subscriber_id,
                        delivery_id=delivery_id,
                        kind="sent" if sent else "scheduled",
                        data={},
                        created_at=now,
                    )
                )


def row_counts(conn: Connection) -> dict[str, int]:
    meta = MetaData()
    return {
        name: int(
            conn.execute(
                select(func.count()).select_from(Table(name, meta, autoload_with=conn))
            ).scalar_one()
        )
        for name in TABLES
    }


def test_upgrade_keeps_every_row_and_fills_keys_and_versions(database_url: str) -> None:
    target, before = versions_revision(database_url)
    config = alembic_config(database_url)
    command.upgrade(config, before)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            fill(conn)
            counts = row_counts(conn)
        command.upgrade(config, target)
        with engine.connect() as conn:
            assert row_counts(conn) == counts
            meta = MetaData()
            steps = Table("steps", meta, autoload_with=conn)
            versions = Table("sequence_versions", meta, autoload_with=conn)
            enrollments = Table("enrollments", meta, autoload_with=conn)
            keys = conn.execute(select(steps.c.key)).scalars().all()
            assert len(keys) == 6 and len(set(keys)) == 6
            assert all(len(key) == 32 for key in keys)
            assert conn.execute(select(steps.c.removed_at)).scalars().all() == [None] * 6
            assert set(conn.execute(select(enrollments.c.version)).scalars()) == {1}
            rows = conn.execute(select(versions).order_by(versions.c.sequence_id)).mappings().all()
            assert [(r["number"], r["state"]) for r in rows] == [(1, "published")] * 2
            for row in rows:
                snapshot = row["snapshot"]
                if isinstance(snapshot, str):
                    snapshot = json.loads(snapshot)
                own = (
                    conn.execute(
                        select(steps.c.key)
                        .where(steps.c.sequence_id == row["sequence_id"])
                        .order_by(steps.c.position)
                    )
                    .scalars()
                    .all()
                )
                assert [s["key"] for s in snapshot["steps"]] == own
                assert [s["day_offset"] for s in snapshot["steps"]] == [0, 1, 2]
                assert snapshot["steps"][2]["resources"] == [
                    {"title": "More", "blurb": "", "url": ""}
                ]
                assert snapshot["settings"] == {
                    "send_hour": 9,
                    "send_end_hour": 21,
                    "send_days": "1234567",
                }
        command.downgrade(config, before)
        command.upgrade(config, target)
        with engine.connect() as conn:
            assert row_counts(conn) == counts
    finally:
        engine.dispose()
