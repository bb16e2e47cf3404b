"""People seated at a chosen place of a sequence, written straight into the database."""

from __future__ import annotations

from datetime import datetime, timedelta

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


def seat(
    session: Session,
    sequence: Sequence,
    email: str,
    status: EnrollmentStatus,
    rows: dict[int, DeliveryState],
    *,
    now: datetime,
    due: datetime,
    day: timedelta = timedelta(days=1),
) -> int:
    """A subscriber with an enrollment in `status` and a delivery in the given state for each
    step number of `rows` (the settled ones a day apart, the last a day ago; waiting ones due
    at `due`); returns the enrollment id.

    The enrollment started as many days ago as it has settled parts, so its later parts fall
    due a day apart from now on, as the engine would have scheduled them.
    """
    steps = list(sequence.steps)
    subscriber = Subscriber(
        email=email,
        time_zone="UTC",
        status=SubscriberStatus.PENDING
        if status is EnrollmentStatus.PENDING
        else SubscriberStatus.ACTIVE,
    )
    session.add(subscriber)
    session.flush()
    waiting_states = (DeliveryState.SCHEDULED, DeliveryState.RETRY)
    started = now - day * sum(1 for state in rows.values() if state not in waiting_states)
    enrollment = Enrollment(
        subscriber_id=subscriber.id,
        sequence_id=sequence.id,
        status=status,
        started_at=None if status is EnrollmentStatus.PENDING else started,
    )
    session.add(enrollment)
    session.flush()
    for number, state in rows.items():
        at = due if state in waiting_states else started + day * (number - 1)
        session.add(
            Delivery(
                kind=DeliveryKind.STEP,
                subscriber_id=subscriber.id,
                enrollment_id=enrollment.id,
                step_id=steps[number - 1].id,
                due_at=at,
                first_due_at=at,
                state=state,
                sent_at=at if state is DeliveryState.SENT else None,
                created_at=at,
            )
        )
    session.flush()
    return enrollment.id
