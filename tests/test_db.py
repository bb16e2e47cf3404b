"""The database belongs to the app: each app its own engine, found through the app's context."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from newsletter.db import db
from tests.helpers.apps import base_env, make_app


def test_two_apps_in_one_process_keep_their_own_databases(tmp_path: Path) -> None:
    first = make_app(base_env(tmp_path / "a", f"sqlite:///{tmp_path / 'a.db'}", None))
    with first.app_context(), db.transaction() as session:
        session.execute(text("CREATE TABLE marker (name TEXT)"))
        session.execute(text("INSERT INTO marker VALUES ('first')"))
    second = make_app(base_env(tmp_path / "b", f"sqlite:///{tmp_path / 'b.db'}", None))
    # Creating the second app neither rebinds nor disposes of the first one's engine.
    with first.app_context():
        assert str(db.engine.url).endswith("a.db")
        with db.session() as session:
            assert session.execute(text("SELECT name FROM marker")).scalar() == "first"
    with second.app_context():
        assert str(db.engine.url).endswith("b.db")
        with db.session() as session:
            tables = session.execute(text("SELECT name FROM sqlite_master")).scalars().all()
        assert "marker" not in tables and "deliveries" in tables
    # Outside any app context (a script, a test's setup): the app made last.
    assert str(db.engine.url).endswith("b.db")
