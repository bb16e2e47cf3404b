"""Loading a batch of claimed deliveries and checking each before anything is sent.

One query loads the batch with its subscribers and enrollments (plain rows, no ORM objects
per delivery); the steps and sequences are a handful of objects per batch. Rows that must
not go out are settled here: skipped (left, suppressed, no longer pending), moved to the
next send window (the catch-up rule), given back to the queue (the bounce breaker holds
sending; or an earlier run of this very task stopped while sending them, so this run is a
redelivery of a task that died), held (its sequence or enrollment was paused after the claim,
see `delivery/holds.py`), or failed alone (a row whose data cannot be used).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, select, update
from sqlalchemy.orm import Session, joinedload, selectinload

from newsletter.delivery import breaker, claims, planning
from newsletter.delivery.policy import Outcome, Policy
from newsletter.mail.compose import Addressee, Composer
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    SequenceStatus,
    Step,
    Subscriber,
    SubscriberStatus,
    Suppression,
    address_hash,
    begun,
    table_of,
)
from newsletter.schedule import real_days

log = logging.getLogger(__name__)

_D = table_of(Delivery)
_S = table_of(Subscriber)
_E = table_of(Enrollment)

_LOAD = (
    select(
        _D.c.id,
        _D.c.kind,
        _D.c.state,
        _D.c.claimed_at,
        _D.c.attempted_at,
        _D.c.due_at,
        _D.c.created_at,
        _D.c.message_id,
        _D.c.step_id,
        _D.c.enrollment_id,
        _D.c.subscriber_id,
        _S.c.email,
        _S.c.first_name,
        _S.c.time_zone,
        _S.c.send_hour,
        _S.c.status.label("subscriber_status"),
        _E.c.status.label("enrollment_status"),
        _E.c.started_at,
    )
    .join(_S, _S.c.id == _D.c.subscriber_id)
    .outerjoin(_E, _E.c.id == _D.c.enrollment_id)
    .where(_D.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_D.c.id)
)
_SKIP = (
    update(_D)
    .where(_D.c.id == bindparam("d_id"))
    .values(state=DeliveryState.SKIPPED, last_error=bindparam("reason"))
)
_FAIL = (
    update(_D)
    .where(_D.c.id == bindparam("d_id"))
    .values(state=DeliveryState.FAILED, last_error=bindparam("reason"))
)
_HOLD = (
    update(_D).where(_D.c.id == bindparam("d_id")).values(state=DeliveryState.HELD, claimed_at=None)
)
_MOVE = (
    update(_D)
    .where(_D.c.id == bindparam("d_id"))
    .values(state=DeliveryState.SCHEDULED, due_at=bindparam("due"), claimed_at=None)
)


@dataclass(slots=True)
class Job:
    """One claimed delivery with what sending it needs, loaded with its batch."""

    delivery_id: int
    kind: DeliveryKind
    addressee: Addressee
    time_zone: str
    message_id: str
    step: Step | None = None
    sequence: Sequence | None = None
    follow: planning.FollowUp | None = None


def _skip_reason(row: Row[Any], suppressed: set[str]) -> str | None:
    """None when the delivery may go out, else why it must be skipped."""
    status = SubscriberStatus(row.subscriber_status)
    if row.email in suppressed:
        return "address is suppressed"
    if row.kind == DeliveryKind.CONFIRM:
        return None if status is SubscriberStatus.PENDING else "no longer pending"
    if status is not SubscriberStatus.ACTIVE:
        return f"subscriber is {status.value}"
    if row.kind == DeliveryKind.RESEND:
        return None  # an admin's resend belongs to no enrollment
    if row.enrollment_status not in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED):
        return "enrollment is not active"
    return None


def _held(row: Row[Any], steps: dict[int, Step]) -> bool:
    """Whether a row claimed before a pause must wait instead (its enrollment or sequence)."""
    if row.enrollment_status == EnrollmentStatus.PAUSED:
        return True
    step = steps.get(row.step_id) if row.step_id is not None else None
    return step is not None and step.sequence.status is SequenceStatus.PAUSED


def _reschedule_at(
    step: Step,
    due_at: datetime,
    time_zone: str,
    send_hour: int | None,
    now: datetime,
    policy: Policy,
) -> datetime | None:
    """For a step outside its send window, or too late: when it should go instead.

    The catch-up rule: a step late by less than the grace goes now (inside the window); a later
    one waits for the next send time (the window's opening, or the reader's preferred hour),
    so an outage never produces a burst of parts at once.
    Windows only exist with real days. The first part answers the person's own click on the
    confirmation link, so it goes at once whatever the hour.
    """
    if not real_days(policy.day_seconds) or step.day_offset == 0:
        return None
    window = step.sequence.window
    if not window.contains(now, time_zone):
        return window.next_opening(now, time_zone, send_hour)
    if now - due_at > policy.catch_up_grace:
        return window.next_opening(now, time_zone, send_hour)
    return None


def _steps(session: Session, step_ids: set[int]) -> dict[int, Step]:
    """The batch's steps with their sequences and sibling steps (a few rows per batch)."""
    if not step_ids:
        return {}
    steps = session.scalars(
        select(Step)
        .where(Step.id.in_(step_ids))
        .options(joinedload(Step.sequence).selectinload(Sequence.steps))
    ).unique()
    return {step.id: step for step in steps}


def _had(session: Session, enrollment_ids: set[int]) -> dict[int, set[int]]:
    """The steps each of the batch's enrollments has a delivery of (one query per batch)."""
    had: dict[int, set[int]] = {}
    if not enrollment_ids:
        return had
    rows = session.execute(
        select(_D.c.enrollment_id, _D.c.step_id).where(
            _D.c.enrollment_id.in_(enrollment_ids), _D.c.step_id.is_not(None)
        )
    )
    for enrollment_id, step_id in rows:
        had.setdefault(enrollment_id, set()).add(step_id)
    return had


def _confirm_sequence(session: Session, subscriber_id: int) -> Sequence | None:
    """The sequence a pending subscriber signed up for (named in the confirmation mail)."""
    return session.scalars(
        select(Sequence)
        .join(Enrollment, Enrollment.sequence_id == Sequence.id)
        .where(Enrollment.subscriber_id == subscriber_id)
        .order_by(Enrollment.id)
        .options(selectinload(Sequence.steps))
        .limit(1)
    ).first()


def _job(
    row: Row[Any],
    composer: Composer,
    session: Session,
    steps: dict[int, Step],
    had: dict[int, set[int]],
    now: datetime,
    policy: Policy,
) -> Job | datetime:
    """The Job of a checked row, or the time it moves to (the next send window)."""
    job = Job(
        row.id,
        DeliveryKind(row.kind),
        Addressee(row.subscriber_id, row.email, row.first_name),
        row.time_zone,
        # The same Message-ID on every attempt, so a receiver can drop a copy of a mail that
        # did arrive before (a retry after an uncertain reply).
        row.message_id or composer.message_id(row.id, row.created_at),
    )
    if job.kind is DeliveryKind.CONFIRM:
        job.sequence = _confirm_sequence(session, row.subscriber_id)
        return job
    step = steps[row.step_id]
    if job.kind is DeliveryKind.RESEND:
        # An admin asked for it now, like part 1 answering a click: no window, no follow-up.
        job.step, job.sequence = step, step.sequence
        return job
    later = _reschedule_at(step, row.due_at, row.time_zone, row.send_hour, now, policy)
    if later is not None:
        return later
    job.step, job.sequence = step, step.sequence
    job.follow = planning.follow_up(
        enrollment_id=row.enrollment_id,
        subscriber_id=row.subscriber_id,
        started_at=row.started_at or row.created_at,
        time_zone=row.time_zone,
        window=step.sequence.window,
        send_hour=row.send_hour,
        step=step,
        steps=step.sequence.steps,
        had=had.get(row.enrollment_id, set()),
    )
    return job


def prepare(
    conn: Connection,
    composer: Composer,
    ids: list[int],
    now: datetime,
    policy: Policy,
    claim: datetime | None,
) -> tuple[list[Job], Counter[Outcome]]:
    """Load and check a batch in one transaction: the jobs to send, and what was settled."""
    jobs: list[Job] = []
    settled: Counter[Outcome] = Counter()
    with conn.begin():
        rows = conn.execute(_LOAD, {"ids": ids}).all()
        session = Session(bind=conn)
        mine = [
            r
            for r in rows
            if r.state == DeliveryState.CLAIMED and (claim is None or r.claimed_at == claim)
        ]
        # Rows claimed again since (after the reaper returned them) belong to another task.
        settled[Outcome.NOT_CLAIMED] = len(ids) - len(mine)
        if mine and breaker.active_trip(session) is not None:
            claims.release_claims(session, [r.id for r in mine])
            settled[Outcome.HELD] = len(mine)
            mine = []
        begun_ids = [r.id for r in mine if begun(r.attempted_at, r.claimed_at)]
        if begun_ids:
            # This task ran before and stopped while sending these (its worker died): they go
            # back like a reaped claim, to be sent alone, instead of stopping this run too.
            claims.give_back(
                session,
                Delivery.id.in_(begun_ids),
                now,
                "the worker stopped while sending it",
                policy.day_seconds,
            )
            settled[Outcome.HELD] += len(begun_ids)
            mine = [r for r in mine if r.id not in begun_ids]
        # Matched by hash: an erased person's entry keeps no address, only its digest.
        hashes = {address_hash(r.email): r.email for r in mine}
        suppressed = {
            hashes[digest]
            for digest in session.scalars(
                select(Suppression.email_hash).where(Suppression.email_hash.in_(hashes))
            )
            if digest is not None
        }
        steps = _steps(session, {r.step_id for r in mine if r.step_id is not None})
        had = _had(session, {r.enrollment_id for r in mine if r.enrollment_id is not None})
        skips: list[dict[str, object]] = []
        holds: list[dict[str, object]] = []
        moves: list[dict[str, object]] = []
        fails: list[dict[str, object]] = []
        for row in mine:
            reason = _skip_reason(row, suppressed)
            if reason is not None:
                skips.append({"d_id": row.id, "reason": reason})
                continue
            if _held(row, steps):
                holds.append({"d_id": row.id})
                continue
            try:
                checked = _job(row, composer, session, steps, had, now, policy)
            except Exception as exc:  # noqa: BLE001 - one unusable row fails alone
                log.error("delivery %d cannot be prepared: %s", row.id, exc)
                fails.append({"d_id": row.id, "reason": f"cannot be prepared: {exc}"[:2000]})
                continue
            if isinstance(checked, datetime):
                log.info("delivery %d moved to the next send window at %s", row.id, checked)
                moves.append({"d_id": row.id, "due": checked})
                continue
            jobs.append(checked)
        if skips:
            conn.execute(_SKIP, skips)
        if holds:
            conn.execute(_HOLD, holds)
        if moves:
            conn.execute(_MOVE, moves)
        if fails:
            conn.execute(_FAIL, fails)
        session.flush()
        session.close()
    settled[Outcome.SKIPPED] += len(skips)
    settled[Outcome.HELD] += len(holds)
    settled[Outcome.RESCHEDULED] += len(moves)
    settled[Outcome.FAILED] += len(fails)
    return jobs, +settled
