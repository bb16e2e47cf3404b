"""Engine and session factory, created unbound and attached to an app in `init_app`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
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


class Database:
    """Holds one engine and its session factory for the process."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._factory: sessionmaker[Session] | None = None

    def configure(self, url: str) -> None:
        """Bind to a database URL; called by the app factory, never at import."""
        if self._engine is not None and str(self._engine.url) == normalise_url(url):
            return
        if self._engine is not None:
            self._engine.dispose()
        self._engine = make_engine(url)
        self._factory = sessionmaker(self._engine, expire_on_commit=False)

    @property
    def engine(self) -> Engine:
        """The bound engine; an error if `configure` was not called."""
        if self._engine is None:
            raise RuntimeError("database is not configured: call create_app() first")
        return self._engine

    def session(self) -> Session:
        """A new Session; the caller owns it (use as a context manager)."""
        if self._factory is None:
            raise RuntimeError("database is not configured: call create_app() first")
        return self._factory()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A Session inside one transaction: committed on success, rolled back on error."""
        with self.session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Drop pooled connections (after fork, and in tests)."""
        if self._engine is not None:
            self._engine.dispose()


db = Database()
