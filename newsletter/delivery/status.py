"""What the delivery engine is doing: counts by state, backlog, held parts, failures, uncertain
sends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.models import (
    WAITING_STATES,
    Delivery,
    DeliveryState,
    Event,
    Sequence,
    SequenceStatus,
    Subscriber,
)


@dataclass(frozen=True)
class Failure:
    """One delivery that failed or is waiting to retry."""

    delivery_id: int
    email: str
    state: DeliveryState
    attempts: int
    last_error: str


@dataclass(frozen=True)
class EngineStatus:
    """A snapshot for operators (`flask --app web status`)."""

    by_state: dict[DeliveryState, int]
    due_now: int
    # Parts waiting on a paused sequence or person: unsent, and not claimed until resumed.
    held: int
    paused_sequences: list[str]
    oldest_due: datetime | None
    uncertain: int
    recent_failures: list[Failure]


def engine_status(session: Session, now: datetime, failures: int = 10) -> EngineStatus:
    """Count deliveries by state, the due backlog, uncertain sends and the latest failures."""
    by_state = {
        state: count
        for state, count in session.execute(
            select(Delivery.state, func.count()).group_by(Delivery.state)
        )
    }
    due = select(Delivery).where(Delivery.state.in_(WAITING_STATES), Delivery.due_at <= now)
    due_now = session.scalar(select(func.count()).select_from(due.subquery())) or 0
    oldest = session.scalar(
        select(func.min(Delivery.due_at)).where(
            Delivery.state.in_(WAITING_STATES), Delivery.due_at <= now
        )
    )
    paused = session.scalars(
        select(Sequence.slug)
        .where(Sequence.status == SequenceStatus.PAUSED)
        .order_by(Sequence.slug)
    ).all()
    uncertain = session.scalar(select(func.count(Event.id)).where(Event.kind == "uncertain")) or 0
    rows = session.execute(
        select(Delivery, Subscriber.email)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.state.in_((DeliveryState.FAILED, DeliveryState.RETRY)))
        .order_by(Delivery.id.desc())
        .limit(failures)
    ).all()
    return EngineStatus(
        by_state=by_state,
        due_now=due_now,
        held=by_state.get(DeliveryState.HELD, 0),
        paused_sequences=list(paused),
        oldest_due=oldest,
        uncertain=uncertain,
        recent_failures=[
            Failure(d.id, email, d.state, d.attempts, d.last_error or "") for d, email in rows
        ],
    )
