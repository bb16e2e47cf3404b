"""Heartbeats: when a periodic job last ran, so a page can tell a stopped beat from a quiet one.

One row per job, overwritten in place (an upsert): a tick costs one statement, and the table
never grows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.db import upsert
from newsletter.models import Heartbeat, table_of

DISPATCH = "dispatch"


def beat(session: Session, name: str, now: datetime) -> None:
    """Record that job `name` ran at `now`."""
    upsert(session, table_of(Heartbeat), "name", {"name": name, "at": now})


def last(session: Session, name: str) -> datetime | None:
    """When job `name` last ran, or None if it never has."""
    return session.scalar(select(Heartbeat.at).where(Heartbeat.name == name))
