"""Holds: waiting mail set aside while its sequence or enrollment is paused, and let go again.

A held row is open (unsent, still to go) but not waiting: the claim only takes scheduled and
retry rows, so a pause costs the hot claim query nothing and a held row is simply passed by.
Pausing holds the waiting rows; a mail already claimed by a worker finishes, unless it was
still unloaded, in which case the last check before sending holds it too
(`delivery/loading.py`). Releasing makes a held row scheduled again, due no sooner than now,
and the catch-up rule of the send window applies as for any late part.

These are the engine's moves; the admin's entry points that decide what to hold are
`content/pausing.py` (a sequence) and `audience/moves.py` (one person).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, insert, literal, select, update
from sqlalchemy.orm import Session
from sqlalchemy.types import JSON

from newsletter.models import (
    WAITING_STATES,
    Delivery,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    Step,
)


class ActionRefused(ValueError):
    """An admin's move that cannot be made, with the reason to show; nothing was changed."""


def hold(session: Session, where: ColumnElement[bool]) -> int:
    """Hold the waiting deliveries `where` selects (due times kept); how many."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.state.in_(WAITING_STATES), where)
        .values(state=DeliveryState.HELD)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def release(session: Session, where: ColumnElement[bool], now: datetime) -> int:
    """Make the held deliveries `where` selects scheduled again, due no sooner than now.

    The time spent held does not count towards a row's give-up age (as for a relay that
    refused us), so a part held for a week is not given up at its first transient failure.
    """
    overdue = Delivery.due_at < now
    result = session.execute(
        update(Delivery)
        .where(Delivery.state == DeliveryState.HELD, where)
        .values(
            state=DeliveryState.SCHEDULED,
            due_at=case((overdue, now), else_=Delivery.due_at),
            first_due_at=case((overdue, now), else_=Delivery.first_due_at),
            claimed_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def of_sequence(sequence_id: int) -> ColumnElement[bool]:
    """The deliveries of a sequence's steps: its parts and any resends of them."""
    return Delivery.step_id.in_(select(Step.id).where(Step.sequence_id == sequence_id))


def of_enrollment(enrollment_id: int) -> ColumnElement[bool]:
    """The deliveries of one enrollment."""
    return Delivery.enrollment_id == enrollment_id


def not_of_paused_enrollments(sequence_id: int) -> ColumnElement[bool]:
    """Deliveries that no paused enrollment of the sequence holds (resends have none)."""
    paused = select(Enrollment.id).where(
        Enrollment.sequence_id == sequence_id, Enrollment.status == EnrollmentStatus.PAUSED
    )
    return Delivery.enrollment_id.is_(None) | Delivery.enrollment_id.not_in(paused)


def note(
    session: Session,
    subscriber_id: int,
    kind: str,
    data: dict[str, Any],
    now: datetime,
    delivery_id: int | None = None,
) -> None:
    """Add an event about an admin's move to one subscriber's timeline."""
    session.add(
        Event(
            subscriber_id=subscriber_id,
            delivery_id=delivery_id,
            kind=kind,
            data=data,
            created_at=now,
        )
    )


def note_enrolled(
    session: Session, where: ColumnElement[bool], kind: str, data: dict[str, Any], now: datetime
) -> int:
    """Add the same event to the timeline of everyone whose enrollment `where` selects.

    One INSERT ... SELECT, whatever the number of people (a sequence paused with a hundred
    thousand readers writes its events in one statement).
    """
    rows = select(
        Enrollment.subscriber_id,
        literal(kind),
        literal(data, JSON()),
        literal(now, Event.__table__.c.created_at.type),
    ).where(where)
    result = session.execute(
        insert(Event).from_select(["subscriber_id", "kind", "data", "created_at"], rows)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
