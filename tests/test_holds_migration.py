"""Migration 0006 (holds): on a database with rows in every table at 0003, the upgrade keeps
every row and every link between them, on SQLite (which recreates three tables) and on
PostgreSQL; the new states are accepted and one open enrollment per sequence is enforced."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import Engine, NullPool, text
from sqlalchemy.exc import IntegrityError

from newsletter.db import make_engine
from newsletter.migrate import alembic_config
from tests.helpers.migration_rows import TABLES, T, fill, snapshot


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, poolclass=NullPool)
    yield engine
    engine.dispose()


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
