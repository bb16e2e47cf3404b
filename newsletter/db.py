"""The database of an app: its engine and session factory, attached to the app in `init_app`.

Flask's extension pattern: `db` is created unbound at import and knows no database; each app
gets its own engine in `init_app`, kept in `app.extensions`, and `db.session()` and
`db.engine` find the one of the current app (a request, a task and a command each run inside
their app's context). Outside any app context (a script, a benchmark, a test's own setup) they
use the app created last in this process, which in a deployment is the only one. Creating an
app never disposes of or rebinds another app's engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker


def normalise_url(url: str) -> str:
    """Point plain PostgreSQL URLs at the psycopg 3 driver the project ships with."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside one writer across processes; busy_timeout makes writers
    # wait (up to 30 s, SQLite's own bounded retry loop) instead of failing at once with
    # "database is locked".
    # The driver's own transaction handling is switched off so that `_begin_immediate` decides.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    # A deferred transaction that reads and then writes must upgrade its lock, and SQLite
    # answers a second process doing the same with an immediate "database is locked" (the
    # busy timeout cannot help: waiting would deadlock). Taking the write lock at BEGIN makes
    # every transaction wait its turn instead.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the per-dialect settings the services rely on."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


_KEY = "newsletter.db"


class _Bound:
    """One app's engine and session factory."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)


class Database:
    """The engine and sessions of the current app (see the module docstring)."""

    def __init__(self) -> None:
        self._latest: _Bound | None = None

    def init_app(self, app: Flask, url: str) -> None:
        """Give `app` an engine for `url` (no connection is made until the first use)."""
        bound = _Bound(make_engine(url))
        app.extensions[_KEY] = bound
        self._latest = bound

    def _bound(self) -> _Bound:
        if has_app_context():
            bound = current_app.extensions.get(_KEY)
            if isinstance(bound, _Bound):
                return bound
        if self._latest is None:
            raise RuntimeError("no app has a database yet: create one with create_app()")
        return self._latest

    @property
    def engine(self) -> Engine:
        """The current app's engine."""
        return self._bound().engine

    def session(self) -> Session:
        """A new Session of the current app's database; the caller owns it."""
        return self._bound().sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A Session inside one transaction: committed on success, rolled back on error."""
        with self.session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Drop the current app's pooled connections (after fork, and in tests)."""
        if has_app_context() or self._latest is not None:
            self._bound().engine.dispose()


db = Database()


def upsert(session: Session, table: Table, key: str, values: dict[str, Any]) -> None:
    """Insert a row of `table`, or overwrite the one with the same primary key `key`.

    One statement on both databases (INSERT ... ON CONFLICT DO UPDATE), so two writers at
    once never fail on the key: the later one's values stay.
    """
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values)
    changed = {name: statement.excluded[name] for name in values if name != key}
    session.execute(statement.on_conflict_do_update(index_elements=[key], set_=changed))
