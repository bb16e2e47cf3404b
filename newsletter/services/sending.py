"""Sending claimed deliveries: re-check, render, send, record, schedule what follows.

A worker sends a batch of claimed ids over its one SMTP connection. Each delivery is recorded
in its own short transaction right after the server's reply, so a crash loses at most the
outcome of the message in flight (the counted "uncertain" window), never a batch.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    EnrollmentStatus,
    Event,
    Step,
    SubscriberStatus,
    Suppression,
)
from newsletter.services import drip
from newsletter.services.compose import Composer
from newsletter.services.mailer import SendError, SmtpTransport
from newsletter.services.schedule import REAL_DAY

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]


class Outcome(enum.Enum):
    """What happened to one delivery handed to the sender."""

    SENT = "sent"
    SKIPPED = "skipped"
    RESCHEDULED = "rescheduled"
    RETRY = "retry"
    FAILED = "failed"
    NOT_CLAIMED = "not-claimed"


@dataclass(frozen=True)
class Policy:
    """The timing rules of sending, from the settings."""

    day_seconds: float = REAL_DAY
    retry_delays: tuple[int, ...] = (60, 300, 1800, 7200, 21600)
    give_up_after: timedelta = timedelta(days=3)
    catch_up_grace: timedelta = timedelta(hours=4)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy a deployment's settings describe."""
        return cls(
            day_seconds=settings.drip_day_seconds,
            retry_delays=settings.retry_schedule,
            give_up_after=timedelta(seconds=settings.retry_give_up_seconds),
            catch_up_grace=timedelta(seconds=settings.catch_up_grace_seconds),
        )

    def retry_delay(self, attempts: int) -> timedelta:
        """How long to wait before attempt number `attempts + 1` (the last delay repeats)."""
        index = min(max(attempts, 1), len(self.retry_delays)) - 1
        return timedelta(seconds=self.retry_delays[index])


def _skip_reason(session: Session, delivery: Delivery) -> str | None:
    """None when the delivery may go out, else why it must be skipped."""
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


def _reschedule_at(delivery: Delivery, now: datetime, policy: Policy) -> datetime | None:
    """For a step outside its send window, or too late: when it should go instead.

    The catch-up rule: a step late by less than the grace goes now (inside the window); a later
    one waits for the next window, so an outage never produces a burst of parts at once.
    Windows only exist with real days. The first part answers the person's own click on the
    confirmation link, so it goes at once whatever the hour.
    """
    if delivery.kind is not DeliveryKind.STEP or policy.day_seconds != REAL_DAY:
        return None
    assert delivery.step is not None
    if delivery.step.day_offset == 0:
        return None
    window = delivery.step.sequence.window
    zone = delivery.subscriber.time_zone
    if not window.contains(now, zone):
        return window.next_opening(now, zone)
    if now - delivery.due_at > policy.catch_up_grace:
        return window.next_opening(now, zone)
    return None


def _build(session: Session, composer: Composer, delivery: Delivery, now: datetime) -> EmailMessage:
    subscriber = delivery.subscriber
    if delivery.kind is DeliveryKind.CONFIRM:
        sequence = next((e.sequence for e in subscriber.enrollments), None)
        message = composer.message(composer.confirmation(subscriber, sequence), subscriber, now)
    else:
        step = delivery.step
        assert step is not None
        sequence = step.sequence
        total = session.scalar(select(func.count(Step.id)).where(Step.sequence_id == sequence.id))
        message = composer.message(
            composer.step(subscriber, step, sequence, total or 0),
            subscriber,
            now,
            list_id=composer.list_id(sequence),
            unsubscribe_url=composer.unsubscribe_url(subscriber.id),
        )
    if delivery.message_id:
        # A retry keeps its Message-ID, so a receiver can drop a copy that did arrive before.
        message.replace_header("Message-ID", delivery.message_id)
    return message


def _prepare(
    sessions: SessionFactory, composer: Composer, delivery_id: int, now: datetime, policy: Policy
) -> tuple[Outcome, EmailMessage | None]:
    with sessions() as session, session.begin():
        delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.state is not DeliveryState.CLAIMED:
            return Outcome.NOT_CLAIMED, None
        reason = _skip_reason(session, delivery)
        if reason is not None:
            delivery.state = DeliveryState.SKIPPED
            delivery.last_error = reason
            return Outcome.SKIPPED, None
        later = _reschedule_at(delivery, now, policy)
        if later is not None:
            log.info("delivery %d moved to the next send window at %s", delivery_id, later)
            delivery.state = DeliveryState.SCHEDULED
            delivery.due_at = later
            delivery.claimed_at = None
            return Outcome.RESCHEDULED, None
        message = _build(session, composer, delivery, now)
        delivery.attempts += 1
        delivery.attempted_at = now
        delivery.message_id = str(message["Message-ID"])
        return Outcome.SENT, message


def _still_wanted(sessions: SessionFactory, delivery_id: int) -> bool:
    # The last look before the SMTP conversation: an unsubscribe that landed while the mail
    # was being rendered wins (unsubscribing skips claimed rows too).
    with sessions() as session, session.begin():
        state = session.scalar(select(Delivery.state).where(Delivery.id == delivery_id))
    return state is DeliveryState.CLAIMED


def _record_sent(sessions: SessionFactory, delivery_id: int, now: datetime, policy: Policy) -> None:
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
            drip.advance(session, delivery, now, policy.day_seconds)


def _hard_bounce(session: Session, delivery: Delivery, detail: str, now: datetime) -> None:
    subscriber = delivery.subscriber
    if session.scalar(select(Suppression.id).where(Suppression.email == subscriber.email)) is None:
        session.add(
            Suppression(email=subscriber.email, reason="bounce", detail=detail, created_at=now)
        )
    subscriber.status = SubscriberStatus.BOUNCED
    drip.skip_pending(session, subscriber.id, reason="address bounced", except_id=delivery.id)
    session.add(
        Event(
            subscriber_id=subscriber.id,
            delivery_id=delivery.id,
            kind="bounce",
            data={"detail": detail[:500]},
            created_at=now,
        )
    )


def _record_failure(
    sessions: SessionFactory, delivery_id: int, error: SendError, now: datetime, policy: Policy
) -> Outcome:
    with sessions() as session, session.begin():
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        delivery.last_error = str(error)[:2000]
        if error.ambiguous:
            # The counted window: the server may have the message. It is retried (with the same
            # Message-ID) rather than dropped; the event makes every such case visible.
            session.add(
                Event(
                    subscriber_id=delivery.subscriber_id,
                    delivery_id=delivery.id,
                    kind="uncertain",
                    data={"error": str(error)[:500]},
                    created_at=now,
                )
            )
        if error.permanent:
            delivery.state = DeliveryState.FAILED
            _hard_bounce(session, delivery, str(error), now)
            log.warning("delivery %d failed permanently: %s", delivery_id, error)
            return Outcome.FAILED
        if now - (delivery.first_due_at or delivery.due_at) > policy.give_up_after:
            delivery.state = DeliveryState.FAILED
            log.error(
                "delivery %d gave up after %d attempts: %s", delivery_id, delivery.attempts, error
            )
            return Outcome.FAILED
        delivery.state = DeliveryState.RETRY
        delivery.due_at = now + policy.retry_delay(delivery.attempts)
        log.warning("delivery %d will be retried at %s: %s", delivery_id, delivery.due_at, error)
        return Outcome.RETRY


def deliver(
    sessions: SessionFactory,
    composer: Composer,
    transport: SmtpTransport,
    delivery_id: int,
    clock: Callable[[], datetime],
    policy: Policy,
) -> Outcome:
    """Send one claimed delivery and record the result. Never raises for mail errors."""
    outcome, message = _prepare(sessions, composer, delivery_id, clock(), policy)
    if message is None:
        return outcome
    if not _still_wanted(sessions, delivery_id):
        return Outcome.SKIPPED
    try:
        transport.send(message)
    except SendError as error:
        return _record_failure(sessions, delivery_id, error, clock(), policy)
    # The unavoidable window: the server has the message. A crash before this commit leaves
    # the row claimed; the reaper offers it again and counts it as uncertain.
    _record_sent(sessions, delivery_id, clock(), policy)
    return Outcome.SENT


def deliver_batch(
    sessions: SessionFactory,
    composer: Composer,
    transport: SmtpTransport,
    delivery_ids: Iterable[int],
    clock: Callable[[], datetime],
    policy: Policy,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    before_send: Callable[[], None] = lambda: None,
    on_outcome: Callable[[Outcome], None] = lambda _: None,
) -> Counter[Outcome]:
    """Send several claimed deliveries over one connection.

    `before_send` runs before each message (the rate limiter waits there); when `should_stop`
    turns true (the error brake) the rest of the batch is released, unsent, to the queue.
    """
    outcomes: Counter[Outcome] = Counter()
    remaining = list(delivery_ids)
    while remaining:
        if should_stop():
            with sessions() as session, session.begin():
                released = drip.release_claims(session, remaining)
            log.warning("error brake: released %d unsent deliveries of a batch", released)
            break
        delivery_id = remaining.pop(0)
        before_send()
        outcome = deliver(sessions, composer, transport, delivery_id, clock, policy)
        outcomes[outcome] += 1
        on_outcome(outcome)
    return outcomes
