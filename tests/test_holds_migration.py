"""Migration 0006 (holds): on a database with rows in every table at 0003, the upgrade keeps
every row and every link between them, on SQLite (which recreates three tables) and on
PostgreSQL; the new states are accepted and one open enrollment per sequence is enforced."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, NullPool, text
from sqlalchemy.exc import IntegrityError

from newsletter.db import make_engine
from newsletter.migrate import alembic_config

TABLES = (
    "sequences",
    "steps",
    "subscribers",
    "enrollments",
    "deliveries",
    "events",
    "suppressions",
    "breaker_trips",
)
T = "'2026-11-01 10:00:00'"
LINKS = (
    "SELECT id, enrollment_id, step_id, subscriber_id, state, kind FROM deliveries ORDER BY id",
    "SELECT id, delivery_id, subscriber_id, kind FROM events ORDER BY id",
    "SELECT id, subscriber_id, sequence_id, status, stop_reason FROM enrollments ORDER BY id",
    "SELECT id, sequence_id, position FROM steps ORDER BY id",
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def fill(conn: Connection) -> None:
    """Rows in every table, as a running 0003 database has them."""
    conn.execute(
        text(
            "INSERT INTO sequences (id, slug, title, description, is_default, send_hour,"
            f" send_end_hour, send_days, created_at) VALUES (1, 's', 'S', '', true, 9, 21,"
            f" '1234567', {T})"
        )
    )
    for step in (1, 2, 3):
        conn.execute(
            text(
                "INSERT INTO steps (id, sequence_id, position, day_offset, subject, preheader,"
                f" body_md, resources, updated_at) VALUES ({step}, 1, {step}, {step - 1},"
                f" 'Part {step}', '', 'Body', '[]', {T})"
            )
        )
    for sub, status in ((1, "active"), (2, "unsubscribed"), (3, "pending")):
        conn.execute(
            text(
                "INSERT INTO subscribers (id, email, time_zone, status, created_at)"
                f" VALUES ({sub}, 'p{sub}@example.org', 'UTC', '{status}', {T})"
            )
        )
    for enr, sub, status, reason in (
        (1, 1, "active", "NULL"),
        (2, 2, "stopped", "'unsubscribed'"),
        (3, 3, "pending", "NULL"),
    ):
        conn.execute(
            text(
                "INSERT INTO enrollments (id, subscriber_id, sequence_id, status, created_at,"
                f" stop_reason) VALUES ({enr}, {sub}, 1, '{status}', {T}, {reason})"
            )
        )
    deliveries = (
        (1, "confirm", 1, "NULL", "NULL", "sent"),
        (2, "step", 1, 1, 1, "sent"),
        (3, "step", 1, 1, 2, "scheduled"),
        (4, "step", 2, 2, 1, "sent"),
        (5, "step", 2, 2, 2, "skipped"),
        (6, "confirm", 3, "NULL", "NULL", "retry"),
    )
    for d_id, kind, sub, enr, step_id, state in deliveries:
        conn.execute(
            text(
                "INSERT INTO deliveries (id, kind, subscriber_id, enrollment_id, step_id, due_at,"
                f" first_due_at, state, attempts, created_at, reaps) VALUES ({d_id}, '{kind}',"
                f" {sub}, {enr}, {step_id}, {T}, {T}, '{state}', 1, {T}, 0)"
            )
        )
    for e_id, sub, d_id, kind in ((1, 1, 2, "confirm"), (2, 2, 5, "unsubscribe"), (3, 3, 6, "x")):
        conn.execute(
            text(
                "INSERT INTO events (id, subscriber_id, delivery_id, kind, data, created_at)"
                f" VALUES ({e_id}, {sub}, {d_id}, '{kind}', '{{}}', {T})"
            )
        )
    conn.execute(
        text(
            "INSERT INTO suppressions (id, email, reason, created_at)"
            f" VALUES (1, 'gone@example.org', 'bounce', {T})"
        )
    )
    conn.execute(
        text(f"INSERT INTO breaker_trips (id, reason, tripped_at) VALUES (1, 'test', {T})")
    )


def snapshot(conn: Connection) -> dict[str, object]:
    counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}
    links = {q: [tuple(r) for r in conn.execute(text(q))] for q in LINKS}
    return {**counts, **links}


def test_the_upgrade_keeps_every_row_and_link(database_url: str, engine: Engine) -> None:
    command.upgrade(alembic_config(database_url), "0003")
    with engine.begin() as conn:
        fill(conn)
        before = snapshot(conn)
    assert all(before[t] for t in TABLES)

    command.upgrade(alembic_config(database_url), "head")
    with engine.begin() as conn:
        assert snapshot(conn) == before
        assert conn.execute(text("SELECT status FROM sequences")).scalar() == "active"
        # The new values pass the new CHECK constraints.
        conn.execute(text("UPDATE deliveries SET state = 'held' WHERE id = 3"))
        conn.execute(text("UPDATE enrollments SET status = 'paused' WHERE id = 1"))
        conn.execute(
            text(
                "INSERT INTO deliveries (id, kind, subscriber_id, step_id, due_at, state,"
                f" attempts, created_at, reaps) VALUES (7, 'resend', 1, 1, {T}, 'scheduled', 0,"
                f" {T}, 0)"
            )
        )
        # A second enrollment beside a stopped one (a restart) is fine...
        conn.execute(
            text(
                "INSERT INTO enrollments (id, subscriber_id, sequence_id, status, created_at)"
                f" VALUES (4, 2, 1, 'active', {T})"
            )
        )
    # ...a second open one is not.
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO enrollments (id, subscriber_id, sequence_id, status, created_at)"
                f" VALUES (5, 1, 1, 'pending', {T})"
            )
        )
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE deliveries SET state = 'lost' WHERE id = 3"))


def test_the_downgrade_undoes_it(database_url: str, engine: Engine) -> None:
    command.upgrade(alembic_config(database_url), "0003")
    with engine.begin() as conn:
        fill(conn)
        before = snapshot(conn)
    command.upgrade(alembic_config(database_url), "head")
    command.downgrade(alembic_config(database_url), "0003")
    with engine.begin() as conn:
        assert snapshot(conn) == before
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO enrollments (id, subscriber_id, sequence_id, status, created_at)"
                f" VALUES (4, 2, 1, 'active', {T})"
            )
        )
