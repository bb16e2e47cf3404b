"""Alembic migrations, run programmatically by `flask --app web init`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from newsletter.db import normalise_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic Config pointing at the package's migrations and `database_url`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str) -> None:
    """Bring the schema to the newest revision (a no-op when it is already there)."""
    command.upgrade(alembic_config(database_url), "head")
