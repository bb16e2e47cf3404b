"""The writes of the send path: mark attempts, record what was sent, failures, releases.

Statements are built once at import and run on one Connection per batch; the per-group ones
are executemany calls, so a group of mails costs the same few round trips as one mail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from newsletter.models import (
    Delivery,
    DeliveryState,
    Event,
    SubscriberStatus,
    Suppression,
    table_of,
)
from newsletter.services import drip
from newsletter.services.batch_load import Job
from newsletter.services.mailer import SendError
from newsletter.services.policy import Outcome, Policy

log = logging.getLogger(__name__)

_D = table_of(Delivery)
_IDS = _D.c.id.in_(bindparam("ids", expanding=True))
_CLAIMED = _D.c.state == DeliveryState.CLAIMED
_OURS = _D.c.claimed_at == bindparam("claim")

_MARK = (
    update(_D)
    .where(_IDS, _CLAIMED)
    .values(attempts=_D.c.attempts + 1, attempted_at=bindparam("now"))
    .returning(_D.c.id)
)
_MARK_OURS = _MARK.where(_OURS)
# Marked but never sent (the error brake): back to the queue as if never tried.
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
        drip.schedule_next(conn, follows, accepted[-1].at, policy.day_seconds)


def _unbuildable(conn: Connection, job: Job, error: Exception) -> None:
    # Bad content (a header with a line break, an address that is not ASCII) will not get
    # better by retrying: the delivery fails, visibly, and the rest of the batch goes on.
    log.error("delivery %d cannot be built: %s", job.delivery_id, error)
    conn.execute(
        update(_D)
        .where(_D.c.id == job.delivery_id)
        .values(state=DeliveryState.FAILED, last_error=f"cannot build the message: {error}")
    )


def advance(
    conn: Connection,
    accepted: list[Accepted],
    broken: list[tuple[Job, Exception]],
    mark_ids: list[int],
    now: datetime,
    claim: datetime | None,
    policy: Policy,
) -> set[int]:
    """One transaction between two groups: record the last, mark the next; the marked ids.

    Marking is the last look before the SMTP conversations: a row an unsubscribe skipped, or
    that another task's claim took over, is not marked and must not be sent.
    """
    with conn.begin():
        record_sent(conn, accepted, policy)
        for job, error in broken:
            _unbuildable(conn, job, error)
        if not mark_ids:
            return set()
        params = {"ids": mark_ids, "now": now, "claim": claim}
        return set(conn.scalars(_MARK if claim is None else _MARK_OURS, params))


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


def record_failure(
    conn: Connection, job: Job, error: SendError, now: datetime, policy: Policy
) -> Outcome:
    """Record a message the server did not (or not certainly) accept; its outcome."""
    with conn.begin(), Session(bind=conn) as session:
        delivery = session.get(Delivery, job.delivery_id)
        assert delivery is not None
        delivery.last_error = str(error)[:2000]
        delivery.message_id = job.message_id
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
        if delivery.state is DeliveryState.SKIPPED and not error.permanent:
            # An unsubscribe landed during the conversation: nothing is left to retry.
            outcome = Outcome.SKIPPED
        elif error.permanent:
            delivery.state = DeliveryState.FAILED
            _hard_bounce(session, delivery, str(error), now)
            log.warning("delivery %d failed permanently: %s", delivery.id, error)
            outcome = Outcome.FAILED
        elif now - (delivery.first_due_at or delivery.due_at) > policy.give_up_after:
            delivery.state = DeliveryState.FAILED
            log.error(
                "delivery %d gave up after %d attempts: %s", delivery.id, delivery.attempts, error
            )
            outcome = Outcome.FAILED
        else:
            delivery.state = DeliveryState.RETRY
            delivery.due_at = now + policy.retry_delay(delivery.attempts)
            log.warning(
                "delivery %d will be retried at %s: %s", delivery.id, delivery.due_at, error
            )
            outcome = Outcome.RETRY
        session.flush()
    return outcome
