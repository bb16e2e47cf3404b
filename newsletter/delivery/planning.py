"""The delivery state machine: schedule, claim, reap, and advance enrollments.

Every mail exists as a `deliveries` row with a due time before any task is queued; the broker
only carries ids. The claim below is the one place that moves rows from scheduled to claimed.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, or_, select, text, update
from sqlalchemy.orm import Session

from newsletter.models import (
    OPEN_ENROLLMENT_STATUSES,
    OPEN_STATES,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    SequenceStatus,
    SequenceVersion,
    Step,
    StopReason,
    VersionState,
    table_of,
)
from newsletter.schedule import SendWindow, step_due_at

log = logging.getLogger(__name__)

# The last_error of what a bounce skipped, so that lifting the suppression finds it again.
SKIPPED_BY_BOUNCE = "address bounced"


def add_delivery(
    session: Session,
    kind: DeliveryKind,
    subscriber_id: int,
    due: datetime,
    now: datetime,
    *,
    enrollment_id: int | None = None,
    step_id: int | None = None,
    held: bool = False,
) -> Delivery:
    """Add a scheduled (or, while paused, held) delivery row: the mail exists before any task
    is queued for it."""
    delivery = Delivery(
        kind=kind,
        subscriber_id=subscriber_id,
        enrollment_id=enrollment_id,
        step_id=step_id,
        due_at=due,
        first_due_at=due,
        state=DeliveryState.HELD if held else DeliveryState.SCHEDULED,
        created_at=now,
    )
    session.add(delivery)
    return delivery


def add_part(
    session: Session, enrollment: Enrollment, step_id: int, due: datetime, now: datetime
) -> Delivery:
    """Add an enrollment's delivery of a step, due at `due`: held while the enrollment or its
    sequence is paused (`paused`), else scheduled."""
    return add_delivery(
        session,
        DeliveryKind.STEP,
        enrollment.subscriber_id,
        due,
        now,
        enrollment_id=enrollment.id,
        step_id=step_id,
        held=paused(session, enrollment),
    )


def paused(session: Session, enrollment: Enrollment) -> bool:
    """Whether the enrollment's parts wait: it, or its sequence, is paused.

    Read under a share lock (PostgreSQL): a pause or resume committing meanwhile is waited
    for and seen, so no part is born held after a resume let the held ones go.
    """
    own, sequence = session.execute(
        select(Enrollment.status, Sequence.status)
        .join(Sequence, Sequence.id == Enrollment.sequence_id)
        .where(Enrollment.id == enrollment.id)
        .with_for_update(read=True)
    ).one()
    return bool(own is EnrollmentStatus.PAUSED or sequence is SequenceStatus.PAUSED)


def sequence_paused(session: Session, sequence_id: int) -> bool:
    """Whether a sequence is paused, read under a share lock like `paused`."""
    status = session.execute(
        select(Sequence.status).where(Sequence.id == sequence_id).with_for_update(read=True)
    ).scalar_one()
    return bool(status is SequenceStatus.PAUSED)


def _schedule_step(
    session: Session,
    enrollment: Enrollment,
    step: Step,
    now: datetime,
    previous_sent_at: datetime | None,
    day_seconds: float,
) -> Delivery:
    started = enrollment.started_at or now
    due = step_due_at(
        started_at=started,
        day_offset=step.day_offset,
        time_zone=enrollment.subscriber.time_zone,
        window=enrollment.sequence.window,
        day_seconds=day_seconds,
        previous_sent_at=previous_sent_at,
        send_hour=enrollment.subscriber.send_hour,
    )
    return add_part(session, enrollment, step.id, due, now)


def start_enrollment(
    session: Session, enrollment: Enrollment, now: datetime, day_seconds: float
) -> Delivery | None:
    """Activate an enrollment on its sequence's published version; schedule part 1, due now
    (held, while its sequence is paused)."""
    sequence_id = enrollment.sequence_id
    if session.get_bind().dialect.name == "postgresql":
        # A publish holds the sequence FOR UPDATE while it rewrites the steps: wait for it, so
        # that part 1 is the first step of the version this enrollment records.
        session.execute(
            select(Sequence.id).where(Sequence.id == sequence_id).with_for_update(read=True)
        )
    enrollment.status = EnrollmentStatus.ACTIVE
    enrollment.started_at = now
    enrollment.version = (
        session.scalar(
            select(func.max(SequenceVersion.number)).where(
                SequenceVersion.sequence_id == sequence_id,
                SequenceVersion.state == VersionState.PUBLISHED,
            )
        )
        or 1
    )
    first = session.scalars(
        select(Step)
        .where(Step.sequence_id == sequence_id, Step.removed_at.is_(None))
        .order_by(Step.position)
    ).first()
    if first is None:
        enrollment.status = EnrollmentStatus.COMPLETED
        enrollment.ended_at = now
        return None
    return _schedule_step(session, enrollment, first, now, None, day_seconds)


@dataclass(frozen=True)
class FollowUp:
    """What scheduling the part after a sent one needs, gathered when the batch was loaded."""

    enrollment_id: int
    subscriber_id: int
    started_at: datetime
    time_zone: str
    window: SendWindow
    next_step_id: int | None
    next_day_offset: int
    send_hour: int | None = None  # the reader's preferred local hour, if they chose one


def follow_up(
    *,
    enrollment_id: int,
    subscriber_id: int,
    started_at: datetime,
    time_zone: str,
    window: SendWindow,
    step: Step,
    steps: list[Step],
    had: Collection[int] = (),
    send_hour: int | None = None,
) -> FollowUp:
    """The FollowUp of a step delivery, given its sequence's live steps in order.

    The next part is the first step after this one that the enrollment has no delivery of
    (`had`, step ids): after a reorder the step next by position may be one it already had,
    and the series must go on past it instead of stalling on the unique (enrollment, step).
    """
    following = next_step(steps, step, had)
    return FollowUp(
        enrollment_id=enrollment_id,
        subscriber_id=subscriber_id,
        started_at=started_at,
        time_zone=time_zone,
        window=window,
        next_step_id=following.id if following else None,
        next_day_offset=following.day_offset if following else 0,
        send_hour=send_hour,
    )


def next_step(steps: Iterable[Step], step: Step, had: Collection[int]) -> Step | None:
    """The first live step after `step` (live steps in order) whose id is not in `had`."""
    return next((s for s in steps if s.position > step.position and s.id not in had), None)


_DELIVERIES = table_of(Delivery)
_ENROLLMENTS = table_of(Enrollment)
# A paused enrollment whose last part was already on its way when the pause came completes.
# (Two comparisons, not IN: an IN list is an expanding parameter, which executemany refuses.)
_STILL_ACTIVE = (_ENROLLMENTS.c.id == bindparam("enrollment_id")) & (
    (_ENROLLMENTS.c.status == EnrollmentStatus.ACTIVE)
    | (_ENROLLMENTS.c.status == EnrollmentStatus.PAUSED)
)
# An enrollment with a part still to go is not complete, whatever the part just sent says: a
# part sent a second time (after an uncertain reply) may find its follow-up already there.
_OPEN_PART = (
    select(_DELIVERIES.c.id)
    .where(
        _DELIVERIES.c.enrollment_id == _ENROLLMENTS.c.id,
        or_(*(_DELIVERIES.c.state == state for state in sorted(OPEN_STATES, key=str))),
    )
    .exists()
)
_COMPLETE = (
    update(_ENROLLMENTS)
    .where(_STILL_ACTIVE, ~_OPEN_PART)
    .values(status=EnrollmentStatus.COMPLETED, ended_at=bindparam("now"))
)
# The next part, inserted only while the enrollment is active or paused (an unsubscribe that
# landed meanwhile wins) and only once (the unique (enrollment, step) pair): one statement, no
# read. It is born held while the enrollment or its sequence is paused (a part that was on its
# way when the pause came is followed by a part that waits). Written as text because
# SQLAlchemy does not cache the compiled form of dialect INSERTs with ON CONFLICT, and this
# runs once per mail; PostgreSQL and SQLite share the syntax.
_INSERT_NEXT_SQL = (
    "INSERT INTO deliveries (kind, subscriber_id, enrollment_id, step_id, due_at, first_due_at,"
    " state, attempts, created_at)"
    " SELECT :kind, :subscriber_id, e.id, :step_id, :due, :due,"
    " CASE WHEN e.status = :paused OR s.status = :paused THEN :held ELSE :scheduled END, 0, :now"
    " FROM enrollments e JOIN sequences s ON s.id = e.sequence_id"
    " WHERE e.id = :enrollment_id AND e.status IN (:active, :paused)"
    "{lock} ON CONFLICT (enrollment_id, step_id) DO NOTHING"
)
_INSERT_NEXT = {
    # PostgreSQL reads the two statuses under a share lock (see `paused`); SQLite's writers
    # take turns, and it has no FOR SHARE.
    dialect: text(_INSERT_NEXT_SQL.format(lock=lock)).bindparams(
        bindparam("due", type_=_DELIVERIES.c.due_at.type),
        bindparam("now", type_=_DELIVERIES.c.created_at.type),
        kind=DeliveryKind.STEP.value,
        scheduled=DeliveryState.SCHEDULED.value,
        held=DeliveryState.HELD.value,
        active=EnrollmentStatus.ACTIVE.value,
        paused=EnrollmentStatus.PAUSED.value,
    )
    for dialect, lock in (("postgresql", " FOR SHARE OF e, s"), ("sqlite", ""))
}


def schedule_next(
    conn: Connection, sent: list[tuple[FollowUp, datetime]], now: datetime, day_seconds: float
) -> None:
    """After parts were sent (each with its send time): schedule each next part, or complete.

    Nothing happens for an enrollment that stopped meanwhile (an unsubscribe). The unique
    (enrollment, step) constraint makes a second scheduling of the same part a no-op. Each
    kind of change is one executemany, whatever the number of mails.
    """
    completed: list[dict[str, object]] = []
    following: list[dict[str, object]] = []
    for follow, sent_at in sent:
        if follow.next_step_id is None:
            completed.append({"enrollment_id": follow.enrollment_id, "now": now})
            continue
        due = step_due_at(
            started_at=follow.started_at,
            day_offset=follow.next_day_offset,
            time_zone=follow.time_zone,
            window=follow.window,
            day_seconds=day_seconds,
            previous_sent_at=sent_at,
            send_hour=follow.send_hour,
        )
        following.append(
            {
                "enrollment_id": follow.enrollment_id,
                "subscriber_id": follow.subscriber_id,
                "step_id": follow.next_step_id,
                "due": due,
                "now": now,
            }
        )
    if completed:
        conn.execute(_COMPLETE, completed)
    if following:
        conn.execute(_INSERT_NEXT[conn.dialect.name], following)


def stop_enrollments(
    session: Session, subscriber_id: int, now: datetime, reason: StopReason
) -> None:
    """End every open enrollment of a subscriber who left or bounced, and why."""
    session.execute(
        update(Enrollment)
        .where(
            Enrollment.subscriber_id == subscriber_id,
            Enrollment.status.in_(OPEN_ENROLLMENT_STATUSES),
        )
        .values(status=EnrollmentStatus.STOPPED, ended_at=now, stop_reason=reason)
        .execution_options(synchronize_session=False)
    )


def move_on(session: Session, delivery: Delivery, now: datetime, day_seconds: float) -> None:
    """After a part failed for good (not a bounce): schedule the part after it, or complete.

    One part that cannot be delivered (refused for its content, unbuildable, given up) must
    not end the course: the reader misses that part and the series goes on, as it would have
    (held, while the enrollment or its sequence is paused).
    """
    enrollment = delivery.enrollment
    step = delivery.step
    if (
        enrollment is None
        or step is None
        or enrollment.status not in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED)
    ):
        return
    had = set(
        session.scalars(select(Delivery.step_id).where(Delivery.enrollment_id == enrollment.id))
    )
    later = session.scalars(
        select(Step)
        .where(
            Step.sequence_id == step.sequence_id,
            Step.removed_at.is_(None),
            Step.position > step.position,
        )
        .order_by(Step.position)
    )
    following = next_step(later, step, {i for i in had if i is not None})
    if following is None:
        session.flush()
        still_open = select(Delivery.id).where(
            Delivery.enrollment_id == enrollment.id, Delivery.state.in_(OPEN_STATES)
        )
        if session.scalar(still_open.limit(1)) is not None:
            return  # a later part is still on its way; it completes the course
        enrollment.status = EnrollmentStatus.COMPLETED
        enrollment.ended_at = now
        return
    _schedule_step(session, enrollment, following, now, now, day_seconds)


def skip_open(
    session: Session, subscriber_id: int, reason: str, except_id: int | None = None
) -> int:
    """Mark every unsent delivery of a subscriber skipped; returns how many."""
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.state.in_(OPEN_STATES),
            Delivery.id != (except_id or 0),
        )
        .values(state=DeliveryState.SKIPPED, last_error=reason)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
