"""Rows with chosen states and times, written straight into the database, for counting tests.

The dashboard's and the funnel's tests write what they count with these, so that every
expected number stands beside the rows it comes from.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    Subscriber,
    SubscriberStatus,
)

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
S = SubscriberStatus
D = DeliveryState


def add_subscriber(
    session: Session,
    email: str,
    status: SubscriberStatus = S.ACTIVE,
    *,
    created: datetime = NOW - timedelta(days=60),
    confirmed: datetime | None = None,
) -> Subscriber:
    """A subscriber in `status`, signed up at `created`."""
    subscriber = Subscriber(
        email=email, status=status, created_at=created, confirmed_at=confirmed, time_zone="UTC"
    )
    session.add(subscriber)
    session.flush()
    return subscriber


def add_delivery(
    session: Session,
    subscriber: Subscriber,
    state: DeliveryState,
    *,
    due: datetime = NOW - timedelta(days=60),
    sent: datetime | None = None,
    enrollment: Enrollment | None = None,
    step_id: int | None = None,
) -> Delivery:
    """A delivery in `state`: a step of `enrollment` with `step_id`, else a confirmation."""
    row = Delivery(
        kind=DeliveryKind.STEP if step_id else DeliveryKind.CONFIRM,
        subscriber_id=subscriber.id,
        enrollment_id=enrollment.id if enrollment else None,
        step_id=step_id,
        state=state,
        due_at=due,
        sent_at=sent,
        claimed_at=NOW - timedelta(minutes=1) if state is D.CLAIMED else None,
    )
    session.add(row)
    session.flush()
    return row


def build_cohorts(session: Session) -> Sequence:
    """Five readers of the seed sequence (four parts), enrolled 3, 3, 40, 40 and 100 days ago."""
    sequence = session.scalars(select(Sequence)).one()
    steps = [step.id for step in sequence.steps]
    assert len(steps) == 4

    def reader(
        email: str, status: SubscriberStatus, days_ago: int, states: list[DeliveryState]
    ) -> None:
        enrolled = NOW - timedelta(days=days_ago)
        who = add_subscriber(session, email, status, created=enrolled, confirmed=enrolled)
        enrollment = Enrollment(
            subscriber_id=who.id,
            sequence_id=sequence.id,
            status=EnrollmentStatus.ACTIVE if status is S.ACTIVE else EnrollmentStatus.STOPPED,
            created_at=enrolled,
        )
        session.add(enrollment)
        session.flush()
        for index, state in enumerate(states):
            sent = enrolled + timedelta(days=index) if state is D.SENT else None
            add_delivery(
                session, who, state, enrollment=enrollment, step_id=steps[index], sent=sent,
                due=enrolled + timedelta(days=index),
            )  # fmt: skip

    reader("ann@x.test", S.ACTIVE, 3, [D.SENT, D.SENT, D.SCHEDULED])
    reader("bob@x.test", S.UNSUBSCRIBED, 3, [D.SENT, D.SKIPPED])
    reader("cid@x.test", S.ACTIVE, 40, [D.SENT, D.SENT, D.SENT, D.SENT])
    reader("dee@x.test", S.BOUNCED, 40, [D.SENT, D.FAILED])
    reader("eve@x.test", S.COMPLAINED, 100, [D.SENT])
    return sequence
