"""The audit log: one entry for every admin action that changes something.

`record` is called in the same transaction as the change it records, so an entry exists
exactly when its change does. Entries are read newest first with keyset pagination over
(created_at, id), filtered by actor, action and period; the indexes on `audit_entries`
(models.py) serve each of those reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.models import Admin, AuditEntry

# The client address of the request being served, set by the web edge for the request's
# duration, so that every entry a request records carries it without each caller passing it.
_origin: ContextVar[str | None] = ContextVar("audit_origin", default=None)

MAX_TARGET = 400
MAX_ACTION = 64


@contextmanager
def origin(ip: str | None) -> Iterator[None]:
    """Record `ip` as the origin of every entry made inside the block."""
    token = _origin.set(ip)
    try:
        yield
    finally:
        _origin.reset(token)


def set_origin(ip: str | None) -> object:
    """Set the origin until `reset_origin` (for request hooks that cannot use a `with`)."""
    return _origin.set(ip)


def reset_origin(token: object) -> None:
    """Undo a `set_origin`."""
    _origin.reset(token)  # type: ignore[arg-type]


def record(
    session: Session,
    *,
    actor: Admin | None,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add an audit entry to `session`'s transaction: `actor` (None: the system) did `action`.

    `action` is dotted ("sequence.publish", "admin.sign_in"); `target` names what it was done
    to ("sequence:3", "admin:ann@example.org"). `before` and `after` hold the changed fields.
    """
    if not action or len(action) > MAX_ACTION:
        raise ValueError(f"an audit action is 1 to {MAX_ACTION} characters, got {action!r}")
    entry = AuditEntry(
        actor_id=actor.id if actor is not None else None,
        actor_email=actor.email if actor is not None else None,
        action=action,
        target=target[:MAX_TARGET],
        before=before,
        after=after,
        ip=_origin.get(),
        created_at=clock.now(),
    )
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class AuditFilter:
    """What the audit page shows: an actor, an action and a period, each optional."""

    actor_id: int | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the (created_at, id) of its last entry."""

    created_at: datetime
    id: int


def page(
    session: Session, chosen: AuditFilter, *, after: Cursor | None = None, size: int = 50
) -> tuple[list[AuditEntry], Cursor | None]:
    """One page of entries, newest first, and the cursor of the next page (None at the end)."""
    query = select(AuditEntry)
    if chosen.actor_id is not None:
        query = query.where(AuditEntry.actor_id == chosen.actor_id)
    if chosen.action is not None:
        query = query.where(AuditEntry.action == chosen.action)
    if chosen.since is not None:
        query = query.where(AuditEntry.created_at >= chosen.since)
    if chosen.until is not None:
        query = query.where(AuditEntry.created_at < chosen.until)
    if after is not None:
        # The tuple comparison (created_at, id) < (:c, :i), spelt out: SQLite and PostgreSQL
        # both use the (…, created_at, id) indexes for it.
        query = query.where(
            or_(
                AuditEntry.created_at < after.created_at,
                and_(AuditEntry.created_at == after.created_at, AuditEntry.id < after.id),
            )
        )
    query = query.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc()).limit(size + 1)
    rows = list(session.scalars(query))
    if len(rows) <= size:
        return rows, None
    last = rows[size - 1]
    return rows[:size], Cursor(last.created_at, last.id)


def actions(session: Session) -> list[str]:
    """Every action name the log holds, for the filter's choices."""
    return list(session.scalars(select(AuditEntry.action).distinct().order_by(AuditEntry.action)))
