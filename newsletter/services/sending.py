"""Sending claimed deliveries: re-check, render, send, record, schedule what follows.

A worker sends a batch of claimed ids over its one SMTP connection. Each delivery is recorded
in its own short transaction right after the server's reply, so a crash loses at most the
outcome of the message in flight (the counted "uncertain" window), never a batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, joinedload

from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    Step,
    SubscriberStatus,
    Suppression,
)
from newsletter.services import drip
from newsletter.services.compose import Composer
from newsletter.services.mailer import SendError, SmtpTransport
from newsletter.services.policy import Outcome, Policy
from newsletter.services.schedule import REAL_DAY

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]


def _load(session: Session, ids: Iterable[int]) -> list[Delivery]:
    """Deliveries with everything sending needs, in one round trip."""
    return list(
        session.scalars(
            select(Delivery)
            .where(Delivery.id.in_(list(ids)))
            .options(
                joinedload(Delivery.subscriber),
                joinedload(Delivery.enrollment).joinedload(Enrollment.sequence),
                joinedload(Delivery.step).joinedload(Step.sequence),
            )
            .order_by(Delivery.id)
        ).unique()
    )


def _skip_reason(delivery: Delivery, suppressed: set[str]) -> str | None:
    """None when the delivery may go out, else why it must be skipped."""
    subscriber = delivery.subscriber
    if subscriber.email in suppressed:
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


def _build(composer: Composer, delivery: Delivery, now: datetime) -> EmailMessage:
    subscriber = delivery.subscriber
    if delivery.kind is DeliveryKind.CONFIRM:
        sequence = next((e.sequence for e in subscriber.enrollments), None)
        message = composer.message(composer.confirmation(subscriber, sequence), subscriber, now)
    else:
        step = delivery.step
        assert step is not None
        sequence = step.sequence
        # The sequence's steps are loaded once per batch (the next part is scheduled from them).
        url = composer.unsubscribe_url(subscriber.id)
        message = composer.message(
            composer.step(subscriber, step, sequence, len(sequence.steps), unsubscribe_url=url),
            subscriber,
            now,
            list_id=composer.list_id(sequence),
            unsubscribe_url=url,
        )
    if delivery.message_id:
        # A retry keeps its Message-ID, so a receiver can drop a copy that did arrive before.
        message.replace_header("Message-ID", delivery.message_id)
    return message


@dataclass
class Prepared:
    """A delivery ready to go: its id and the message built for it (None: nothing to send)."""

    delivery_id: int
    outcome: Outcome
    message: EmailMessage | None = None
    kind: DeliveryKind = DeliveryKind.STEP
    subscriber_id: int | None = None
    step_id: int | None = None
    follow: drip.FollowUp | None = None


def _holds_claim(delivery: Delivery, claim: datetime | None) -> bool:
    """Whether this task's claim is still the row's claim.

    A claim is identified by its time. If the reaper returned the row and a later tick claimed
    it again, the row carries the new claim and an older task still in the queue must leave
    it alone, or the mail would go out twice.
    """
    if delivery.state is not DeliveryState.CLAIMED:
        return False
    return claim is None or delivery.claimed_at == claim


def _prepare_batch(
    sessions: SessionFactory,
    composer: Composer,
    ids: list[int],
    now: datetime,
    policy: Policy,
    claim: datetime | None,
) -> list[Prepared]:
    """Load, check and render a whole batch in one transaction."""
    prepared: dict[int, Prepared] = {i: Prepared(i, Outcome.NOT_CLAIMED) for i in ids}
    with sessions() as session, session.begin():
        deliveries = [d for d in _load(session, ids) if _holds_claim(d, claim)]
        emails = {d.subscriber.email for d in deliveries}
        suppressed = set(
            session.scalars(select(Suppression.email).where(Suppression.email.in_(emails)))
        )
        for delivery in deliveries:
            reason = _skip_reason(delivery, suppressed)
            if reason is not None:
                delivery.state = DeliveryState.SKIPPED
                delivery.last_error = reason
                prepared[delivery.id].outcome = Outcome.SKIPPED
                continue
            later = _reschedule_at(delivery, now, policy)
            if later is not None:
                log.info("delivery %d moved to the next send window at %s", delivery.id, later)
                delivery.state = DeliveryState.SCHEDULED
                delivery.due_at = later
                delivery.claimed_at = None
                prepared[delivery.id].outcome = Outcome.RESCHEDULED
                continue
            message = _build(composer, delivery, now)
            delivery.message_id = str(message["Message-ID"])
            follow = None
            if delivery.step is not None:
                follow = drip.follow_up(delivery, delivery.step.sequence.steps)
            prepared[delivery.id] = Prepared(
                delivery.id,
                Outcome.SENT,
                message,
                delivery.kind,
                delivery.subscriber_id,
                delivery.step_id,
                follow,
            )
    return [prepared[i] for i in ids]


def _mark_attempt(
    sessions: SessionFactory, delivery_id: int, now: datetime, claim: datetime | None
) -> bool:
    """Record that sending begins, if the delivery is still claimed; False means drop it.

    This is the last look before the SMTP conversation: an unsubscribe that landed while the
    batch was being rendered has skipped the row, and wins.
    """
    still_ours = [Delivery.id == delivery_id, Delivery.state == DeliveryState.CLAIMED]
    if claim is not None:
        still_ours.append(Delivery.claimed_at == claim)
    with sessions() as session, session.begin():
        marked = session.execute(
            update(Delivery)
            .where(*still_ours)
            .values(attempts=Delivery.attempts + 1, attempted_at=now)
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        ).first()
    return marked is not None


def _record_sent(sessions: SessionFactory, item: Prepared, now: datetime, policy: Policy) -> None:
    with sessions() as session, session.begin():
        # Record the truth even if an unsubscribe or the reaper touched the row meanwhile:
        # the server accepted the message.
        session.execute(
            update(Delivery)
            .where(Delivery.id == item.delivery_id)
            .values(state=DeliveryState.SENT, sent_at=now, last_error=None)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            insert(Event).values(
                subscriber_id=item.subscriber_id,
                delivery_id=item.delivery_id,
                kind="sent",
                data={"kind": item.kind.value, "step_id": item.step_id},
                created_at=now,
            )
        )
        if item.follow is not None:
            drip.schedule_next(session, item.follow, now, now, policy.day_seconds)


def _hard_bounce(session: Session, delivery: Delivery, detail: str, now: datetime) -> None:
    subscriber = delivery.subscriber
    if session.scalar(select(Suppression.id).where(Suppression.email == subscriber.email)) is None:
        session.add(
            Suppression(email=subscriber.email, reason="bounce", detail=detail, created_at=now)
        )
    subscriber.status = SubscriberStatus.BOUNCED
    drip.stop_enrollments(session, subscriber.id, now)
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


def _send_one(
    sessions: SessionFactory,
    transport: SmtpTransport,
    item: Prepared,
    clock: Callable[[], datetime],
    policy: Policy,
    claim: datetime | None,
) -> Outcome:
    assert item.message is not None
    if not _mark_attempt(sessions, item.delivery_id, clock(), claim):
        return Outcome.SKIPPED
    try:
        transport.send(item.message)
    except SendError as error:
        return _record_failure(sessions, item.delivery_id, error, clock(), policy)
    # The unavoidable window: the server has the message. A crash before this commit leaves
    # the row claimed; the reaper offers it again and counts it as uncertain.
    _record_sent(sessions, item, clock(), policy)
    return Outcome.SENT


def deliver_batch(
    sessions: SessionFactory,
    composer: Composer,
    transport: SmtpTransport,
    delivery_ids: Iterable[int],
    clock: Callable[[], datetime],
    policy: Policy,
    *,
    claim: datetime | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    before_send: Callable[[], None] = lambda: None,
    on_outcome: Callable[[Outcome], None] = lambda _: None,
) -> Counter[Outcome]:
    """Send several claimed deliveries over one connection; never raises for mail errors.

    `claim` is the claim time the dispatcher gave the batch: rows claimed again since (after the
    reaper returned them) belong to another task and are left alone. The batch is loaded and
    rendered in one transaction; each message is then marked, sent and recorded on its own.
    `before_send` runs before each message (the rate limiter waits there); when `should_stop`
    turns true (the error brake) the rest of the batch goes back, unsent, to
    the queue.
    """
    outcomes: Counter[Outcome] = Counter()
    items = _prepare_batch(sessions, composer, list(delivery_ids), clock(), policy, claim)
    for index, item in enumerate(items):
        if item.message is None:
            outcome = item.outcome
        elif should_stop():
            rest = [i.delivery_id for i in items[index:] if i.message is not None]
            with sessions() as session, session.begin():
                released = drip.release_claims(session, rest)
            log.warning("error brake: released %d unsent deliveries of a batch", released)
            break
        else:
            before_send()
            outcome = _send_one(sessions, transport, item, clock, policy, claim)
        outcomes[outcome] += 1
        on_outcome(outcome)
    return outcomes


def deliver(
    sessions: SessionFactory,
    composer: Composer,
    transport: SmtpTransport,
    delivery_id: int,
    clock: Callable[[], datetime],
    policy: Policy,
) -> Outcome:
    """Send one claimed delivery and record the result."""
    outcomes = deliver_batch(sessions, composer, transport, [delivery_id], clock, policy)
    return next(iter(outcomes))
