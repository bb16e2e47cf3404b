"""Migration 0009 (preferences): the send-hour column is added to subscribers in use and taken
away again, every row kept, on SQLite (which recreates the table) and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, NullPool, inspect, text

from newsletter.db import make_engine
from newsletter.migrate import alembic_config

T = "'2026-11-01 10:00:00'"
ROWS = "SELECT id, email, time_zone, status FROM subscribers ORDER BY id"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def preferences_revision(database_url: str) -> tuple[str, str]:
    """(the preferences migration's revision, the one before it), whatever the chain numbers."""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    revision = next(r for r in script.walk_revisions() if r.path.endswith("_preferences.py"))
    assert isinstance(revision.down_revision, str)
    return revision.revision, revision.down_revision


def fill(conn: Connection) -> list[tuple[object, ...]]:
    for sub, zone, status in ((1, "UTC", "active"), (2, "Europe/Paris", "unsubscribed")):
        conn.execute(
            text(
                "INSERT INTO subscribers (id, email, time_zone, status, created_at)"
                f" VALUES ({sub}, 'p{sub}@example.org', '{zone}', '{status}', {T})"
            )
        )
    return [tuple(r) for r in conn.execute(text(ROWS))]


def columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("subscribers")}


def test_the_upgrade_adds_the_send_hour_and_the_downgrade_takes_it_away(
    database_url: str, engine: Engine
) -> None:
    revision, before = preferences_revision(database_url)
    command.upgrade(alembic_config(database_url), before)
    with engine.begin() as conn:
        rows = fill(conn)
    assert "send_hour" not in columns(engine)
    command.upgrade(alembic_config(database_url), revision)
    assert "send_hour" in columns(engine)
    with engine.begin() as conn:
        assert [tuple(r) for r in conn.execute(text(ROWS))] == rows
        assert conn.execute(text("SELECT send_hour FROM subscribers")).scalars().all() == [
            None,
            None,
        ]
        conn.execute(text("UPDATE subscribers SET send_hour = 7 WHERE id = 1"))
    command.downgrade(alembic_config(database_url), before)
    assert "send_hour" not in columns(engine)
    with engine.begin() as conn:
        assert [tuple(r) for r in conn.execute(text(ROWS))] == rows
