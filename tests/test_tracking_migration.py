"""Migration 0010 (tracking): on a database with rows in every table, the upgrade keeps them
all, leaves every sequence untracked and adds the clicks and opens tables with their unique
keys; the downgrade removes them and keeps the rest. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import Engine, NullPool, text
from sqlalchemy.exc import IntegrityError

from newsletter.db import make_engine
from newsletter.migrate import alembic_config
from tests.helpers.migration_rows import T, fill, snapshot


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def filled_at_0009(database_url: str, engine: Engine) -> dict[str, object]:
    command.upgrade(alembic_config(database_url), "0003")
    with engine.begin() as conn:
        fill(conn)
    command.upgrade(alembic_config(database_url), "0009")
    with engine.begin() as conn:
        return snapshot(conn)


def test_the_upgrade_keeps_every_row_and_tracks_nothing(database_url: str, engine: Engine) -> None:
    before = filled_at_0009(database_url, engine)
    command.upgrade(alembic_config(database_url), "0010")
    with engine.begin() as conn:
        assert snapshot(conn) == before
        assert conn.execute(text("SELECT tracking FROM sequences")).scalars().all() == [False]
        conn.execute(text(f"INSERT INTO clicks (delivery_id, link, clicked_at) VALUES (2, 0, {T})"))
        conn.execute(text(f"INSERT INTO clicks (delivery_id, link, clicked_at) VALUES (2, 1, {T})"))
        conn.execute(text(f"INSERT INTO opens (delivery_id, opened_at) VALUES (2, {T})"))
    for again in (
        f"INSERT INTO clicks (delivery_id, link, clicked_at) VALUES (2, 0, {T})",
        f"INSERT INTO opens (delivery_id, opened_at) VALUES (2, {T})",
    ):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(again))


def test_the_downgrade_undoes_it(database_url: str, engine: Engine) -> None:
    before = filled_at_0009(database_url, engine)
    command.upgrade(alembic_config(database_url), "0010")
    with engine.begin() as conn:
        conn.execute(text("UPDATE sequences SET tracking = true"))
        conn.execute(text(f"INSERT INTO opens (delivery_id, opened_at) VALUES (2, {T})"))
    command.downgrade(alembic_config(database_url), "0009")
    with engine.begin() as conn:
        assert snapshot(conn) == before
        columns = conn.execute(text("SELECT * FROM sequences")).keys()
        assert "tracking" not in columns
    with pytest.raises(Exception, match="opens"), engine.begin() as conn:
        conn.execute(text("SELECT count(*) FROM opens"))
