"""Subscribers made straight in the database, for tests of the subscribers table and timeline."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.audience import subscriptions
from newsletter.models import Sequence, Step, Subscriber, SubscriberStatus


def add_person(
    session: Session,
    email: str,
    created_at: datetime,
    *,
    status: SubscriberStatus = SubscriberStatus.ACTIVE,
    first_name: str | None = None,
) -> Subscriber:
    """A subscriber row with only what the table shows."""
    person = Subscriber(
        email=email, first_name=first_name, status=status, created_at=created_at, time_zone="UTC"
    )
    session.add(person)
    session.flush()
    return person


def add_people(session: Session, count: int, start: datetime, prefix: str = "p") -> list[int]:
    """`count` active subscribers a second apart, `p0000@example.org` onwards; their ids."""
    ids = []
    for n in range(count):
        person = add_person(session, f"{prefix}{n:04d}@example.org", start + timedelta(seconds=n))
        ids.append(person.id)
    return ids


def seed_steps(session: Session) -> list[Step]:
    """The seed sequence's steps, in order."""
    sequence = session.scalars(select(Sequence).order_by(Sequence.id)).first()
    assert sequence is not None
    return list(sequence.steps)


def signed_up(
    session: Session,
    email: str,
    now: datetime,
    *,
    first_name: str | None = None,
    time_zone: str = "UTC",
    confirm: bool = True,
) -> Subscriber:
    """A person who signed up through the service (and confirmed), at `now`."""
    subscriptions.signup(
        session,
        subscriptions.SignupRequest(
            email=email,
            first_name=first_name,
            time_zone=time_zone,
            ip="203.0.113.9",
            user_agent="Mozilla/5.0 (test)",
        ),
        now,
    )
    person = session.scalars(select(Subscriber).where(Subscriber.email == email)).one()
    if confirm:
        subscriptions.confirm(session, person.id, person.email, now, 86400)
    session.flush()
    return person
