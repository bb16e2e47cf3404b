"""Sending one claimed delivery: re-check, render, send, record, schedule what follows."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from email.message import EmailMessage

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    EnrollmentStatus,
    Event,
    Step,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from newsletter.services import drip
from newsletter.services.compose import Composer
from newsletter.services.mailer import SendError, SmtpTransport

log = logging.getLogger(__name__)

# Transient failures are retried after these delays (then every 6 hours) until the delivery
# is older than RETRY_GIVE_UP_AFTER, when it fails for good.
RETRY_DELAYS = (60, 300, 1800, 7200, 21600)
RETRY_GIVE_UP_AFTER = timedelta(days=3)


class Outcome(enum.Enum):
    """What happened to a delivery handed to `deliver`."""

    SENT = "sent"
    SKIPPED = "skipped"
    RETRY = "retry"
    FAILED = "failed"
    NOT_CLAIMED = "not-claimed"


SessionFactory = Callable[[], Session]


def _eligible(session: Session, delivery: Delivery) -> str | None:
    """None when the delivery may go out now, else the reason it must be skipped."""
    subscriber = delivery.subscriber
    suppressed = session.scalar(select(Suppression.id).where(Suppression.email == subscriber.email))
    if suppressed is not None:
        return "address is suppressed"
    if delivery.kind is DeliveryKind.CONFIRM:
        return None if subscriber.status is SubscriberStatus.PENDING else "no longer pending"
    if subscriber.status is not SubscriberStatus.ACTIVE:
        return f"subscriber is {subscriber.status.value}"
    if delivery.enrollment is None or delivery.enrollment.status is not EnrollmentStatus.ACTIVE:
        return "enrollment is not active"
    return None


def _build(session: Session, composer: Composer, delivery: Delivery, now: datetime) -> EmailMessage:
    subscriber = delivery.subscriber
    if delivery.kind is DeliveryKind.CONFIRM:
        sequence = next((e.sequence for e in subscriber.enrollments), None)
        return composer.message(composer.confirmation(subscriber, sequence), subscriber, now)
    step = delivery.step
    assert step is not None
    sequence = step.sequence
    total = session.scalar(select(func.count(Step.id)).where(Step.sequence_id == sequence.id)) or 0
    rendered = composer.step(subscriber, step, sequence, total)
    return composer.message(
        rendered,
        subscriber,
        now,
        list_id=composer.list_id(sequence),
        unsubscribe_url=composer.unsubscribe_url(subscriber.id),
    )


def _prepare(
    sessions: SessionFactory, composer: Composer, delivery_id: int, now: datetime
) -> tuple[Outcome, EmailMessage | None]:
    with sessions() as session, session.begin():
        delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.state is not DeliveryState.CLAIMED:
            return Outcome.NOT_CLAIMED, None
        reason = _eligible(session, delivery)
        if reason is not None:
            delivery.state = DeliveryState.SKIPPED
            delivery.last_error = reason
            return Outcome.SKIPPED, None
        message = _build(session, composer, delivery, now)
        delivery.attempts += 1
        delivery.message_id = str(message["Message-ID"])
        return Outcome.SENT, message


def _still_wanted(sessions: SessionFactory, delivery_id: int) -> bool:
    # The last look before the SMTP conversation: an unsubscribe that landed while the mail
    # was being rendered wins.
    with sessions() as session:
        row = session.execute(
            select(Delivery.state, Subscriber.status)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.id == delivery_id)
        ).first()
    if row is None or row[0] is not DeliveryState.CLAIMED:
        return False
    return row[1] in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING)


def _record_sent(
    sessions: SessionFactory, delivery_id: int, now: datetime, day_seconds: float
) -> None:
    with sessions() as session, session.begin():
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        # Record the truth even if an unsubscribe or the reaper touched the row meanwhile:
        # the server accepted the message.
        delivery.state = DeliveryState.SENT
        delivery.sent_at = now
        delivery.last_error = None
        session.add(
            Event(
                subscriber_id=delivery.subscriber_id,
                delivery_id=delivery.id,
                kind="sent",
                data={"kind": delivery.kind.value, "step_id": delivery.step_id},
                created_at=now,
            )
        )
        if delivery.kind is DeliveryKind.STEP:
            drip.advance(session, delivery, now, day_seconds)


def retry_delay(attempts: int) -> timedelta:
    """How long to wait before attempt number `attempts + 1`."""
    index = min(max(attempts, 1), len(RETRY_DELAYS)) - 1
    return timedelta(seconds=RETRY_DELAYS[index])


def _record_failure(
    sessions: SessionFactory, delivery_id: int, error: SendError, now: datetime
) -> Outcome:
    with sessions() as session, session.begin():
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        delivery.last_error = str(error)[:2000]
        if error.permanent:
            delivery.state = DeliveryState.FAILED
            _hard_bounce(session, delivery, str(error), now)
            log.warning("delivery %d failed permanently: %s", delivery_id, error)
            return Outcome.FAILED
        if now - delivery.created_at > RETRY_GIVE_UP_AFTER:
            delivery.state = DeliveryState.FAILED
            log.error(
                "delivery %d gave up after %d attempts: %s", delivery_id, delivery.attempts, error
            )
            return Outcome.FAILED
        delivery.state = DeliveryState.RETRY
        delivery.due_at = now + retry_delay(delivery.attempts)
        log.warning("delivery %d will be retried at %s: %s", delivery_id, delivery.due_at, error)
        return Outcome.RETRY


def _hard_bounce(session: Session, delivery: Delivery, detail: str, now: datetime) -> None:
    subscriber = delivery.subscriber
    if session.scalar(select(Suppression.id).where(Suppression.email == subscriber.email)) is None:
        session.add(
            Suppression(email=subscriber.email, reason="bounce", detail=detail, created_at=now)
        )
    subscriber.status = SubscriberStatus.BOUNCED
    session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber.id, Delivery.state.in_(drip.CLAIMABLE_STATES))
        .values(state=DeliveryState.SKIPPED, last_error="address bounced")
        .execution_options(synchronize_session=False)
    )
    session.add(
        Event(
            subscriber_id=subscriber.id,
            delivery_id=delivery.id,
            kind="bounce",
            data={"detail": detail[:500]},
            created_at=now,
        )
    )


def deliver(
    sessions: SessionFactory,
    composer: Composer,
    transport: SmtpTransport,
    delivery_id: int,
    clock: Callable[[], datetime],
    day_seconds: float,
) -> Outcome:
    """Send one claimed delivery and record the result. Never raises for mail errors."""
    outcome, message = _prepare(sessions, composer, delivery_id, clock())
    if message is None:
        return outcome
    if not _still_wanted(sessions, delivery_id):
        with sessions() as session, session.begin():
            session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id, Delivery.state == DeliveryState.CLAIMED)
                .values(state=DeliveryState.SKIPPED, last_error="subscriber left before sending")
            )
        return Outcome.SKIPPED
    try:
        transport.send(message)
    except SendError as error:
        return _record_failure(sessions, delivery_id, error, clock())
    # The unavoidable window: the server has the message; a crash before this commit leaves
    # the row claimed and the reaper will offer it again.
    _record_sent(sessions, delivery_id, clock(), day_seconds)
    return Outcome.SENT
