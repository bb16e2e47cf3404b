"""Alembic environment: migrations run against the URL the caller configured."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, pool

from newsletter.db import make_engine
from newsletter.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    """Emit SQL without a database connection (`alembic upgrade --sql`)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _pragma(connection: Connection, statement: str) -> None:
    raw = connection.connection.dbapi_connection
    assert raw is not None
    raw.execute(statement)


def run_online() -> None:
    """Run migrations on a live connection."""
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode copies a table and drops the old one; with foreign keys on, that drop
            # would cascade into every child table (deliveries, events) and lose their rows.
            # The pragma only takes effect outside a transaction, so it goes to the driver's
            # connection (in autocommit mode, see db.py) before SQLAlchemy begins one.
            _pragma(connection, "PRAGMA foreign_keys=OFF")
        # Batch mode lets ALTER TABLE work on SQLite by copying the table.
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left rows without their parent: {broken[:5]}")
        if sqlite:
            _pragma(connection, "PRAGMA foreign_keys=ON")
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
