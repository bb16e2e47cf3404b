"""Empty PostgreSQL databases for tests, one at a time per test process.

CREATE DATABASE and DROP DATABASE cost about a second together on this machine (DROP forces a
checkpoint), and they queue behind each other's disk writes when tests run in parallel; emptying
a database (DROP SCHEMA public CASCADE) takes a hundredth of that. So each test process keeps
the databases it created and hands each one out again once emptied: a test still starts on a
database with nothing in it and nobody connected, and every database is dropped at the end.
"""

from __future__ import annotations

import uuid

import psycopg


class Databases:
    """The PostgreSQL databases of one test process (the admin URL names the server)."""

    def __init__(self, admin_url: str) -> None:
        self.base = admin_url.rsplit("/", 1)[0]
        self.admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
        self.free: list[str] = []
        self.made: list[str] = []

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def take(self) -> str:
        """The name of an empty database nobody is connected to."""
        if self.free:
            return self.free.pop()
        name = f"nl_test_{uuid.uuid4().hex[:12]}"
        self.admin.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return name

    def give_back(self, name: str) -> None:
        """Cut every connection to the database, empty it, and keep it for the next test."""
        self._disconnect(name)
        with psycopg.connect(self.url(name), autocommit=True, connect_timeout=3) as conn:
            # Everything a test makes (tables, types, sequences, alembic_version) lives in the
            # public schema.
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        self.free.append(name)

    def close(self) -> None:
        """Drop every database this process made."""
        for name in self.made:
            self._disconnect(name)
            self.admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        self.admin.close()

    def _disconnect(self, name: str) -> None:
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
