"""The writes of the send path: begin attempts, record what was sent, failures, releases.

Statements are built once at import and run on one Connection per batch; recording sent mail
is one executemany per group, so a group of mails costs the same few round trips as one mail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from newsletter.delivery import breaker, planning
from newsletter.delivery.loading import Job
from newsletter.delivery.policy import Outcome, Policy
from newsletter.delivery.verdicts import Verdict, judge
from newsletter.mail.transport import SendError
from newsletter.models import (
    Delivery,
    DeliveryState,
    Event,
    StopReason,
    SubscriberStatus,
    Suppression,
    address_hash,
    table_of,
)

log = logging.getLogger(__name__)

_D = table_of(Delivery)
_IDS = _D.c.id.in_(bindparam("ids", expanding=True))
_CLAIMED = _D.c.state == DeliveryState.CLAIMED
_OURS = _D.c.claimed_at == bindparam("claim")

# The last look before one message's MAIL FROM: its attempt begins only if the row is still
# claimed by this batch (an unsubscribe marks it skipped; the reaper may have handed it to
# another task). Once this has committed, an unsubscribe waits for the message's outcome.
_MARK = (
    update(_D)
    .where(_D.c.id == bindparam("d_id"), _CLAIMED)
    .values(attempts=_D.c.attempts + 1, attempted_at=bindparam("now"))
)
_MARK_OURS = _MARK.where(_OURS)
# Marked but never sent (the brake, a pause, an expired claim): back to the queue as if
# never tried.
_UNMARK = (
    update(_D)
    .where(_IDS, _CLAIMED)
    .values(
        state=DeliveryState.SCHEDULED,
        claimed_at=None,
        attempted_at=None,
        attempts=_D.c.attempts - 1,
    )
)
_UNMARK_OURS = _UNMARK.where(_OURS)
_RELEASE = update(_D).where(_IDS, _CLAIMED).values(state=DeliveryState.SCHEDULED, claimed_at=None)
_RELEASE_OURS = _RELEASE.where(_OURS)
# The server accepted the message: record that even if an unsubscribe or the reaper touched
# the row meanwhile, because it is the truth.
_SENT = (
    update(_D)
    .where(_D.c.id == bindparam("d_id"))
    .values(
        state=DeliveryState.SENT,
        sent_at=bindparam("now"),
        message_id=bindparam("mid"),
        last_error=None,
    )
)


@dataclass(slots=True)
class Accepted:
    """A message the server accepted, not yet recorded."""

    job: Job
    at: datetime


def record_sent(conn: Connection, accepted: list[Accepted], policy: Policy) -> None:
    """Record accepted messages and schedule what follows each.

    The delivery row is the record of a sent mail (state, sent_at, Message-ID); the events
    log keeps what the rows cannot show (bounces, uncertain outcomes, unsubscribes), so it
    does not grow by a row per mail.
    """
    if not accepted:
        return
    conn.execute(
        _SENT, [{"d_id": a.job.delivery_id, "now": a.at, "mid": a.job.message_id} for a in accepted]
    )
    follows = [(a.job.follow, a.at) for a in accepted if a.job.follow is not None]
    if follows:
        planning.schedule_next(conn, follows, accepted[-1].at, policy.day_seconds)


def mark(conn: Connection, delivery_id: int, now: datetime, claim: datetime | None) -> bool:
    """Begin one message's attempt if its row is still this batch's to send; whether it is."""
    with conn.begin():
        params = {"d_id": delivery_id, "now": now, "claim": claim}
        return bool(conn.execute(_MARK if claim is None else _MARK_OURS, params).rowcount)


def record(conn: Connection, accepted: list[Accepted], policy: Policy) -> None:
    """Record a group of accepted messages in one transaction (see `record_sent`)."""
    with conn.begin():
        record_sent(conn, accepted, policy)


def record_unbuildable(
    conn: Connection, job: Job, error: BaseException, now: datetime, policy: Policy
) -> None:
    """A message that could not be built fails alone, with the error; the series goes on.

    Bad content (a template that fails for this subscriber, a header with a line break, an
    address that cannot be encoded) will not get better by retrying.
    """
    reason = f"cannot build the message: {type(error).__name__}: {error}"[:2000]
    log.error("delivery %d %s", job.delivery_id, reason)
    with conn.begin(), Session(bind=conn) as session:
        delivery = session.get(Delivery, job.delivery_id)
        if delivery is None or delivery.state is not DeliveryState.CLAIMED:
            return
        delivery.state = DeliveryState.FAILED
        delivery.last_error = reason
        planning.move_on(session, delivery, now, policy.day_seconds)
        session.flush()


def release(
    conn: Connection,
    accepted: list[Accepted],
    marked: list[int],
    unmarked: list[int],
    claim: datetime | None,
    policy: Policy,
) -> int:
    """Record what was sent; put the unsent rows of a stopped batch back in the queue."""
    with conn.begin():
        record_sent(conn, accepted, policy)
        released = 0
        if marked:
            statement = _UNMARK if claim is None else _UNMARK_OURS
            released += conn.execute(statement, {"ids": marked, "claim": claim}).rowcount
        if unmarked:
            statement = _RELEASE if claim is None else _RELEASE_OURS
            released += conn.execute(statement, {"ids": unmarked, "claim": claim}).rowcount
    return int(released)


def _note(
    session: Session, delivery: Delivery, kind: str, data: dict[str, str], now: datetime
) -> None:
    """Add an event about a delivery to its subscriber's timeline."""
    session.add(
        Event(
            subscriber_id=delivery.subscriber_id,
            delivery_id=delivery.id,
            kind=kind,
            data=data,
            created_at=now,
        )
    )


def _hard_bounce(session: Session, delivery: Delivery, detail: str, now: datetime) -> None:
    subscriber = delivery.subscriber
    digest = address_hash(subscriber.email)
    if session.scalar(select(Suppression.id).where(Suppression.email_hash == digest)) is None:
        session.add(
            Suppression(
                email=subscriber.email,
                email_hash=digest,
                reason="bounce",
                detail=detail,
                created_at=now,
            )
        )
    subscriber.status = SubscriberStatus.BOUNCED
    planning.stop_enrollments(session, subscriber.id, now, StopReason.BOUNCED)
    planning.skip_open(
        session, subscriber.id, reason=planning.SKIPPED_BY_BOUNCE, except_id=delivery.id
    )
    _note(session, delivery, "bounce", {"detail": detail[:500]}, now)


def _retry_or_give_up(
    delivery: Delivery, error: SendError, now: datetime, policy: Policy
) -> Outcome:
    if now - (delivery.first_due_at or delivery.due_at) > policy.give_up_after:
        delivery.state = DeliveryState.FAILED
        log.error(
            "delivery %d gave up after %d attempts: %s", delivery.id, delivery.attempts, error
        )
        return Outcome.FAILED
    delivery.state = DeliveryState.RETRY
    delivery.due_at = now + policy.retry_delay(delivery.attempts)
    log.warning("delivery %d will be retried at %s: %s", delivery.id, delivery.due_at, error)
    return Outcome.RETRY


def record_failure(
    conn: Connection,
    job: Job,
    error: SendError,
    now: datetime,
    policy: Policy,
    claim: datetime | None = None,
) -> Outcome:
    """Record a message the server did not (or not certainly) accept; its outcome.

    What happens follows the verdict on the failure (`verdicts.judge`): a transient one is
    retried; a refusal of us by the relay puts the mail back in the queue, unharmed, and the
    caller pauses sending; only a refusal of the recipient's mailbox bounces and suppresses
    the address; a refused message fails alone and the series goes on.

    A row that stopped being this batch's during the conversation (`claim` is the batch's
    claim time) is left as its new owner has it: an unsubscribe skipped it, or the reaper
    handed it on and another attempt may already have sent it and scheduled the next part.
    """
    verdict = judge(error)
    with conn.begin(), Session(bind=conn) as session:
        delivery = session.get(Delivery, job.delivery_id)
        assert delivery is not None
        ours = delivery.state is DeliveryState.CLAIMED and (
            claim is None or delivery.claimed_at == claim
        )
        if error.ambiguous:
            # The counted window: the server may have the message. It is retried (with the same
            # Message-ID) rather than dropped; the event makes every such case visible.
            _note(session, delivery, "uncertain", {"error": str(error)[:500]}, now)
        if not ours and verdict is not Verdict.MAILBOX:
            # Writing a retry over a row another attempt recorded as sent would send that part
            # again, after its follow-up exists, and end the course early.
            log.warning("delivery %d failed after it left this batch: %s", delivery.id, error)
            outcome = Outcome.PAUSED if verdict is Verdict.RELAY else Outcome.SKIPPED
            session.flush()
            return outcome
        delivery.last_error = str(error)[:2000]
        delivery.message_id = job.message_id
        if verdict is Verdict.RELAY:
            # Nobody's mailbox is at fault: the mail waits in the queue, due now, until sending
            # resumes, and the wait does not count towards its give-up age.
            delivery.state = DeliveryState.RETRY
            delivery.due_at = delivery.first_due_at = now
            log.error("delivery %d refused by the relay, not the recipient: %s", delivery.id, error)
            outcome = Outcome.PAUSED
        elif verdict is Verdict.MAILBOX:
            if delivery.state is not DeliveryState.SENT:  # another attempt's success stays
                delivery.state = DeliveryState.FAILED
            _hard_bounce(session, delivery, str(error), now)
            log.warning("delivery %d bounced: %s", delivery.id, error)
            outcome = Outcome.BOUNCED
        elif verdict is Verdict.MESSAGE:
            delivery.state = DeliveryState.FAILED
            _note(session, delivery, "refused", {"detail": str(error)[:500]}, now)
            planning.move_on(session, delivery, now, policy.day_seconds)
            log.warning("delivery %d refused, failing alone: %s", delivery.id, error)
            outcome = Outcome.REFUSED
        else:
            outcome = _retry_or_give_up(delivery, error, now, policy)
            if outcome is Outcome.FAILED:
                planning.move_on(session, delivery, now, policy.day_seconds)
        session.flush()
    return outcome


def hold_sending(conn: Connection, reason: str, now: datetime) -> bool:
    """Record a breaker trip, unless one already holds sending; whether this one is new."""
    with conn.begin(), Session(bind=conn) as session:
        return breaker.hold(session, reason, now)


def last_resume(conn: Connection) -> datetime | None:
    """When an operator last resumed sending after a breaker trip."""
    with conn.begin(), Session(bind=conn) as session:
        return breaker.last_resume(session)
