"""The suppression list: addresses that are never mailed again, and lifting one by mistake.

An address is suppressed when its mailbox bounced (or by a complaint). If a bounce was not
the recipient's fault (a relay misjudged, a bad day at the receiver), an operator lifts it:
the address leaves the list and a subscriber the bounce stopped goes on where they were,
with the part that bounced due again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from newsletter.delivery import planning
from newsletter.models import (
    Delivery,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    StopReason,
    Subscriber,
    SubscriberStatus,
    Suppression,
    address_hash,
)


class LiftError(ValueError):
    """A lift that cannot be done (the address is not suppressed)."""


def listed(
    session: Session,
    *,
    since: datetime | None = None,
    reason: str | None = None,
    email: str | None = None,
) -> list[Suppression]:
    """Suppressed addresses, oldest first, optionally only those since a time, of a reason,
    or of one address (matched by its hash, so an erased person's entry is found too).

    An erased person's entry has no address (`email` is None), only its hash.
    """
    query = select(Suppression).order_by(Suppression.created_at, Suppression.id)
    if email is not None:
        query = query.where(Suppression.email_hash == address_hash(email))
    if since is not None:
        query = query.where(Suppression.created_at >= since)
    if reason is not None:
        query = query.where(Suppression.reason == reason)
    return list(session.scalars(query))


def is_suppressed(session: Session, email: str) -> bool:
    """Whether an address (in its stored form) is on the list, by its hash: an erased
    person's entry keeps only the hash, and still refuses them."""
    found = session.scalar(
        select(Suppression.id).where(Suppression.email_hash == address_hash(email)).limit(1)
    )
    return found is not None


def suppress(
    session: Session, email: str, reason: str, now: datetime, detail: str | None = None
) -> Suppression:
    """Put an address on the list (once), with its hash; the existing entry if it is there."""
    digest = address_hash(email)
    found = session.scalar(select(Suppression).where(Suppression.email_hash == digest).limit(1))
    if found is not None:
        return found
    entry = Suppression(
        email=email, email_hash=digest, reason=reason, detail=detail, created_at=now
    )
    session.add(entry)
    return entry


def lift(session: Session, email: str, now: datetime) -> Subscriber | None:
    """Take an address off the suppression list; a subscriber a bounce stopped goes on.

    Returns the subscriber with that address, if any. Only a subscriber whose status is
    "bounced" is restored (to active, or pending if they never confirmed); one who
    unsubscribed or complained stays as they are.
    """
    email = email.strip().lower()
    suppression = session.scalar(
        select(Suppression).where(Suppression.email_hash == address_hash(email))
    )
    if suppression is None:
        raise LiftError(f"{email} is not on the suppression list")
    session.delete(suppression)
    subscriber = session.scalar(
        select(Subscriber).where(Subscriber.email == email).with_for_update()
    )
    if subscriber is None:
        return None
    session.add(
        Event(
            subscriber_id=subscriber.id,
            kind="unsuppressed",
            data={"reason": suppression.reason},
            created_at=now,
        )
    )
    if subscriber.status is not SubscriberStatus.BOUNCED:
        return subscriber
    confirmed = subscriber.confirmed_at is not None
    subscriber.status = SubscriberStatus.ACTIVE if confirmed else SubscriberStatus.PENDING
    session.execute(
        update(Enrollment)
        .where(
            Enrollment.subscriber_id == subscriber.id, Enrollment.stop_reason == StopReason.BOUNCED
        )
        .values(
            status=EnrollmentStatus.ACTIVE if confirmed else EnrollmentStatus.PENDING,
            ended_at=None,
            stop_reason=None,
        )
        .execution_options(synchronize_session=False)
    )
    bounced = select(Event.delivery_id).where(
        Event.subscriber_id == subscriber.id, Event.kind == "bounce"
    )
    # The part that bounced, and what the bounce skipped, are due again at once.
    session.execute(
        update(Delivery)
        .where(
            Delivery.subscriber_id == subscriber.id,
            (
                (Delivery.id.in_(bounced) & (Delivery.state == DeliveryState.FAILED))
                | (
                    (Delivery.state == DeliveryState.SKIPPED)
                    & (Delivery.last_error == planning.SKIPPED_BY_BOUNCE)
                )
            ),
        )
        .values(
            state=DeliveryState.SCHEDULED,
            due_at=now,
            first_due_at=now,
            claimed_at=None,
            last_error="due again: the suppression was lifted",
        )
        .execution_options(synchronize_session=False)
    )
    return subscriber
