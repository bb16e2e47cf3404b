"""What the delivery engine is doing: counts by state, backlog, held parts, failures, uncertain
sends.

`health` is the part cheap enough for a page at millions of rows: it counts only the
unsettled, held and failed states, through `ix_deliveries_state_due`, never the sent history.
`engine_status` (`flask status`) adds the full count by state, the paused sequences and the
latest failures. `brake` says whether sending holds or pauses, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.delivery import breaker
from newsletter.delivery.flow import Pause
from newsletter.models import (
    WAITING_STATES,
    BreakerTrip,
    Delivery,
    DeliveryState,
    Event,
    Sequence,
    SequenceStatus,
    Subscriber,
)

# The states the engine's health counts beside what is due.
HEALTH_STATES = (
    DeliveryState.CLAIMED,
    DeliveryState.RETRY,
    DeliveryState.FAILED,
    DeliveryState.HELD,
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
class Health:
    """The engine's unsettled work: what is due, in flight, retrying, failed, held (waiting on
    a paused sequence or person) or uncertain."""

    due_now: int
    oldest_due: datetime | None
    claimed: int
    retrying: int
    failed: int
    uncertain: int
    held: int


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


@dataclass(frozen=True)
class Brake:
    """Whether sending is stopped: held by the bounce breaker, or paused (the relay, the
    error brake). Both None: mail is going out."""

    trip: BreakerTrip | None
    pause: Pause | None

    def describe(self, now: datetime) -> str:
        """One line for operators: running, or why not and until when."""
        if self.trip is not None:
            return (
                f"HELD by the bounce breaker since {self.trip.tripped_at.isoformat()}: "
                f"{self.trip.reason}. Check the relay and the list; lift suppressions made "
                "by mistake (flask --app web suppressions list --since ...), then: "
                "flask --app web resume"
            )
        if self.pause is None:
            return "running"
        left = self.pause.until - now.timestamp()
        return f"PAUSED for {max(0.0, left):.0f} s more (resumes by itself): {self.pause.reason}"


def health(session: Session, now: datetime) -> Health:
    """Due now (and the oldest due time), claimed, retrying, failed, held and uncertain."""
    due = select(func.count(), func.min(Delivery.due_at)).where(
        Delivery.state.in_(WAITING_STATES), Delivery.due_at <= now
    )
    due_now, oldest = session.execute(due).one()
    by_state = {
        state: int(count)
        for state, count in session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.state.in_(HEALTH_STATES))
            .group_by(Delivery.state)
        )
    }
    # Served by ix_events_kind: uncertain sends are a handful among millions of events.
    uncertain = session.scalar(select(func.count(Event.id)).where(Event.kind == "uncertain"))
    return Health(
        due_now=int(due_now or 0),
        oldest_due=oldest,
        claimed=by_state.get(DeliveryState.CLAIMED, 0),
        retrying=by_state.get(DeliveryState.RETRY, 0),
        failed=by_state.get(DeliveryState.FAILED, 0),
        uncertain=int(uncertain or 0),
        held=by_state.get(DeliveryState.HELD, 0),
    )


def brake(session: Session, pause: Pause | None) -> Brake:
    """The brake on sending: the breaker's trip from the database, and the flow pause given
    (`FlowControl.pause()`, from the shared store)."""
    return Brake(trip=breaker.active_trip(session), pause=pause)


def engine_status(session: Session, now: datetime, failures: int = 10) -> EngineStatus:
    """Count deliveries by state, the due backlog, uncertain sends and the latest failures."""
    by_state = {
        state: count
        for state, count in session.execute(
            select(Delivery.state, func.count()).group_by(Delivery.state)
        )
    }
    current = health(session, now)
    paused = session.scalars(
        select(Sequence.slug)
        .where(Sequence.status == SequenceStatus.PAUSED)
        .order_by(Sequence.slug)
    ).all()
    rows = session.execute(
        select(Delivery, Subscriber.email)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.state.in_((DeliveryState.FAILED, DeliveryState.RETRY)))
        .order_by(Delivery.id.desc())
        .limit(failures)
    ).all()
    return EngineStatus(
        by_state=by_state,
        due_now=current.due_now,
        held=by_state.get(DeliveryState.HELD, 0),
        paused_sequences=list(paused),
        oldest_due=current.oldest_due,
        uncertain=current.uncertain,
        recent_failures=[
            Failure(d.id, email, d.state, d.attempts, d.last_error or "") for d, email in rows
        ],
    )
