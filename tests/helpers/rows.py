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


def realistic_list(session: Session, now: datetime, people: int = 2400) -> Sequence:
    """A month of a small list, for pictures: signups with a weekly rhythm, most confirming,
    parts sent a day apart, a few leaving, failing, retrying, claimed, due or uncertain.

    Written in bulk with explicit ids (SQLite); the seed sequence must be imported.
    """
    import random

    from sqlalchemy import func, insert

    from newsletter.models import Event

    rng = random.Random(11)
    sequence = session.scalars(select(Sequence).order_by(Sequence.id)).first()
    assert sequence is not None
    steps = [step.id for step in sequence.steps]
    base = int(session.scalar(select(func.coalesce(func.max(Subscriber.id), 0))) or 0)
    subscribers: list[dict[str, object]] = []
    enrollments: list[dict[str, object]] = []
    deliveries: list[dict[str, object]] = []
    events: list[dict[str, object]] = []
    names = ["Ann", "Bo", None, "Zoë", "<b>Eve</b>", "李", "Omar", None]
    for n in range(people):
        # More signups on weekdays, and a launch two weeks ago.
        day = rng.choices(range(30), weights=[
            (3 if (now - timedelta(days=d)).weekday() < 5 else 1.5) + (6 if d in (13, 14) else 0)
            for d in range(30)
        ])[0]  # fmt: skip
        created = now - timedelta(days=day, minutes=rng.randrange(24 * 60))
        created = min(created, now - timedelta(minutes=5))
        roll = rng.random()
        status = (
            S.PENDING if roll < 0.12 else S.UNSUBSCRIBED if roll < 0.2 else
            S.BOUNCED if roll < 0.23 else S.COMPLAINED if roll < 0.24 else S.ACTIVE
        )  # fmt: skip
        ident = base + n + 1
        confirmed = (
            None if status is S.PENDING
            else min(now - timedelta(minutes=1), created + timedelta(minutes=rng.randrange(90)))
        )  # fmt: skip
        subscribers.append({
            "id": ident, "email": f"reader{ident}@example.org", "first_name": names[n % 8],
            "time_zone": "UTC", "status": status, "created_at": created,
            "confirmed_at": confirmed, "consent_at": created,
        })  # fmt: skip
        deliveries.append({
            "kind": DeliveryKind.CONFIRM, "subscriber_id": ident, "due_at": created,
            "state": D.SENT, "sent_at": created + timedelta(seconds=4), "attempts": 1,
        })  # fmt: skip
        events.append({"subscriber_id": ident, "kind": "signup", "created_at": created, "data": {}})
        if confirmed is None:
            continue
        left = status is not S.ACTIVE
        reached = max(1, min(4, (now - confirmed).days + 1))
        if left:
            reached = rng.randrange(1, reached + 1)
        enrollments.append({
            "id": ident, "subscriber_id": ident, "sequence_id": sequence.id,
            "status": EnrollmentStatus.STOPPED if left else
            EnrollmentStatus.COMPLETED if reached == 4 else EnrollmentStatus.ACTIVE,
            "created_at": created, "started_at": confirmed,
        })  # fmt: skip
        for position in range(1, 5):
            due = confirmed + timedelta(days=position - 1)
            if position <= reached:
                state, sent = D.SENT, due + timedelta(seconds=9)
            elif position == reached + 1 and not left:
                state = rng.choices(
                    [D.SCHEDULED, D.RETRY, D.FAILED, D.CLAIMED], weights=[90, 4, 3, 1]
                )[0]
                sent = None
            elif position == reached + 1 and status is S.UNSUBSCRIBED:
                state, sent = D.SKIPPED, None
            else:
                break
            deliveries.append({
                "kind": DeliveryKind.STEP, "subscriber_id": ident, "enrollment_id": ident,
                "step_id": steps[position - 1], "due_at": min(due, now + timedelta(hours=3)),
                "state": state, "sent_at": sent, "attempts": 1 if sent else 0,
                "claimed_at": now - timedelta(seconds=20) if state is D.CLAIMED else None,
            })  # fmt: skip
        if n % 700 == 3:
            events.append({"subscriber_id": ident, "kind": "uncertain", "created_at": now,
                           "data": {}})  # fmt: skip
    session.execute(insert(Subscriber), subscribers)
    session.execute(insert(Enrollment), enrollments)
    session.execute(insert(Delivery), deliveries)
    session.execute(insert(Event), events)
    return sequence
