"""A reader's own changes from their preferences page: time zone, send hour, pause, resume,
restart, another sequence.

The moves are the admin's (`audience/moves.py`), made "by reader"; what this module adds is
the reader's side of them: an enrollment must be theirs, and no change ever brings a second
part the same day. That rule is one function, `not_before`: a part a reader's change sets
due is never due before the local midnight after their last part (or after the part that is
on the wire, when a worker has claimed one). Every refusal raises `PreferenceRefused` naming
the field it belongs beside, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.audience import moves
from newsletter.delivery import holds, planning
from newsletter.delivery.holds import ActionRefused
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
    Step,
    StopReason,
    Subscriber,
    SubscriberStatus,
)
from newsletter.schedule import (
    MIN_GAP_DAYS,
    known_time_zones,
    next_local_day,
    real_days,
    step_due_at,
)

BY = "reader"
MID_SEND = "A part is on its way to you right now; try again in a minute."


class PreferenceRefused(ValueError):
    """A reader's change that cannot be made: the reason, and the field it belongs beside."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Course:
    """One of the reader's enrollments as their page shows it."""

    enrollment_id: int
    sequence_title: str
    status: EnrollmentStatus
    next_part: int | None
    next_due_at: datetime | None


@dataclass(frozen=True)
class Overview:
    """What the preferences page shows: the reader's settings, courses and other sequences."""

    email: str
    status: SubscriberStatus
    time_zone: str
    send_hour: int | None
    courses: list[Course]
    others: list[tuple[int, str]]  # public sequences they are not in: (id, title)


def overview(session: Session, subscriber_id: int) -> Overview | None:
    """The reader's page; None for an unknown or erased subscriber."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.erased_at is not None:
        return None
    latest = (
        select(func.max(Enrollment.id))
        .where(Enrollment.subscriber_id == subscriber_id)
        .group_by(Enrollment.sequence_id)
    )
    courses = []
    inside: set[int] = set()
    for enrollment in session.scalars(
        select(Enrollment).where(Enrollment.id.in_(latest)).order_by(Enrollment.id)
    ):
        if enrollment.status in OPEN_ENROLLMENT_STATUSES:
            inside.add(enrollment.sequence_id)
        waiting = session.execute(
            select(Step.position, Delivery.due_at)
            .join(Step, Step.id == Delivery.step_id)
            .where(Delivery.enrollment_id == enrollment.id, Delivery.state.in_(OPEN_STATES))
            .order_by(Delivery.due_at)
            .limit(1)
        ).first()
        courses.append(
            Course(
                enrollment_id=enrollment.id,
                sequence_title=enrollment.sequence.title,
                status=enrollment.status,
                next_part=waiting[0] if waiting else None,
                next_due_at=waiting[1] if waiting else None,
            )
        )
    others = [
        (s.id, s.title)
        for s in public_sequences(session)
        if s.id not in inside and s.status is not SequenceStatus.DRAFT
    ]
    return Overview(
        email=subscriber.email,
        status=subscriber.status,
        time_zone=subscriber.time_zone,
        send_hour=subscriber.send_hour,
        courses=courses,
        others=others,
    )


def public_sequences(session: Session) -> list[Sequence]:
    """The sequences a reader may choose: every one that is not a draft, by title."""
    return list(
        session.scalars(
            select(Sequence)
            .where(Sequence.status != SequenceStatus.DRAFT)
            .order_by(Sequence.title, Sequence.id)
        )
    )


def _subscriber(session: Session, subscriber_id: int) -> Subscriber:
    """The reader, locked (see `holds.lock_person`); refused once they left or were erased."""
    holds.lock_person(session, subscriber_id)
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.erased_at is not None:
        raise PreferenceRefused("form", "This link names nobody any more.")
    session.refresh(subscriber)
    if subscriber.status is not SubscriberStatus.ACTIVE:
        raise PreferenceRefused(
            "form", f"You are {subscriber.status.value}: there is nothing to change."
        )
    return subscriber


def _enrollment(session: Session, subscriber: Subscriber, enrollment_id: int) -> Enrollment:
    """One of the reader's own enrollments; an id of someone else's is refused."""
    enrollment = session.get(Enrollment, enrollment_id)
    if enrollment is None or enrollment.subscriber_id != subscriber.id:
        raise PreferenceRefused("form", "That is not one of your series.")
    return enrollment


def _mid_send(session: Session, subscriber_id: int) -> bool:
    """Whether a worker has claimed one of the reader's parts (it may be on the wire)."""
    claimed = select(Delivery.id).where(
        Delivery.subscriber_id == subscriber_id,
        Delivery.state == DeliveryState.CLAIMED,
        Delivery.kind.in_((DeliveryKind.STEP, DeliveryKind.RESEND)),
    )
    return session.scalar(claimed.limit(1)) is not None


def not_before(
    session: Session, subscriber: Subscriber, now: datetime, day_seconds: float
) -> datetime:
    """The earliest a part a reader's change sets due may go: never the day of their last part.

    With real days: the local midnight after their last part (or now, if that is later); a
    part claimed by a worker counts as sent now, since it cannot be called back. With a
    shortened day (demos, tests), the usual gap after the last part.
    """
    last = session.scalar(
        select(func.max(Delivery.sent_at)).where(
            Delivery.subscriber_id == subscriber.id,
            Delivery.kind.in_((DeliveryKind.STEP, DeliveryKind.RESEND)),
        )
    )
    if _mid_send(session, subscriber.id):
        last = now
    if last is None:
        return now
    if real_days(day_seconds):
        return max(now, next_local_day(last, subscriber.time_zone))
    return max(now, last + timedelta(seconds=MIN_GAP_DAYS * day_seconds))


def _last_sent(session: Session, enrollment_id: int) -> datetime | None:
    return session.scalar(
        select(func.max(Delivery.sent_at)).where(Delivery.enrollment_id == enrollment_id)
    )


def _waiting(session: Session, subscriber_id: int) -> list[Delivery]:
    """The reader's parts that wait (scheduled or held), locked: a claim skips locked rows."""
    return list(
        session.scalars(
            select(Delivery)
            .where(
                Delivery.subscriber_id == subscriber_id,
                Delivery.kind == DeliveryKind.STEP,
                Delivery.state.in_((DeliveryState.SCHEDULED, DeliveryState.HELD)),
            )
            .with_for_update()
        )
    )


def _set_due(delivery: Delivery, due: datetime) -> None:
    delivery.due_at = delivery.first_due_at = due


def set_timing(
    session: Session,
    subscriber_id: int,
    time_zone: str,
    send_hour: int | None,
    now: datetime,
    day_seconds: float,
) -> None:
    """Set the reader's time zone and preferred send hour (None: when the window opens).

    Their waiting parts move to the new time at once: a later part is due on its day of the
    timetable at the new hour in the new zone, never the day of their last part. Refused for
    an unknown zone, an hour outside 0-23, or while a part is on its way to them.
    """
    if time_zone not in known_time_zones():
        raise PreferenceRefused("time_zone", "Choose a time zone from the list.")
    if send_hour is not None and not 0 <= send_hour <= 23:
        raise PreferenceRefused("send_hour", "Choose an hour from the list.")
    subscriber = _subscriber(session, subscriber_id)
    if _mid_send(session, subscriber_id):
        raise PreferenceRefused("form", MID_SEND)
    subscriber.time_zone = time_zone
    subscriber.send_hour = send_hour
    session.flush()
    earliest = not_before(session, subscriber, now, day_seconds)
    for delivery in _waiting(session, subscriber_id):
        enrollment, step = delivery.enrollment, delivery.step
        if enrollment is None or step is None or step.day_offset <= 0:
            continue  # part 1 answers the reader's click: it goes at once, whatever the hour
        due = step_due_at(
            started_at=enrollment.started_at or now,
            day_offset=step.day_offset,
            time_zone=time_zone,
            window=enrollment.sequence.window,
            day_seconds=day_seconds,
            previous_sent_at=_last_sent(session, enrollment.id),
            send_hour=send_hour,
        )
        _set_due(delivery, _send_time_from(enrollment, subscriber, max(due, earliest), day_seconds))
    holds.note(
        session,
        subscriber_id,
        "preferences",
        {"reason": f"time zone {time_zone}, send hour {_hour_text(send_hour)} set by {BY}"},
        now,
    )


def _hour_text(hour: int | None) -> str:
    return "when the window opens" if hour is None else f"{hour:02d}:00"


def _send_time_from(
    enrollment: Enrollment,
    subscriber: Subscriber,
    earliest: datetime,
    day_seconds: float,
    *,
    soonest: bool = False,
) -> datetime:
    """The reader's first send time at or after `earliest` (with shortened days: `earliest`).

    That is their preferred hour; without one (or `soonest`), any time inside the window.
    """
    if not real_days(day_seconds):
        return earliest
    window = enrollment.sequence.window
    hour = None if soonest else subscriber.send_hour
    if hour is None and window.contains(earliest, subscriber.time_zone):
        return earliest
    return window.next_opening(earliest - timedelta(microseconds=1), subscriber.time_zone, hour)


def pause(session: Session, subscriber_id: int, enrollment_id: int, now: datetime) -> None:
    """Pause one of the reader's series (the admin's move, by the reader)."""
    subscriber = _subscriber(session, subscriber_id)
    enrollment = _enrollment(session, subscriber, enrollment_id)
    try:
        moves.pause_enrollment(session, enrollment, now, by=BY)
    except ActionRefused as exc:
        raise PreferenceRefused("enrollment", str(exc)) from None


def resume(
    session: Session,
    subscriber_id: int,
    enrollment_id: int,
    now: datetime,
    day_seconds: float,
    *,
    catch_up: bool,
) -> None:
    """Resume a paused series: where they left off, or catching up with its timetable.

    Where they left off: the part they were waiting for comes at their next send time. Catching
    up: the part the timetable says they would be on today comes as soon as the send window
    allows (parts whose days went by during the pause are skipped, as an admin's move to a
    step skips them). Either way a part whose time is still ahead keeps it, and none comes the
    day of their last part.
    """
    subscriber = _subscriber(session, subscriber_id)
    enrollment = _enrollment(session, subscriber, enrollment_id)
    if _mid_send(session, subscriber_id):
        raise PreferenceRefused("enrollment", MID_SEND)
    # The times they waited for, before the resume makes an overdue part due now.
    held_due = {d.id: d.due_at for d in _waiting(session, subscriber_id)}
    try:
        moves.resume_enrollment(session, enrollment, now, by=BY)
        target = _timetable_step(session, enrollment, now, day_seconds) if catch_up else None
        if target is not None:
            moves.move_to_step(session, enrollment, target, now, by=f"{BY} (catching up)")
    except ActionRefused as exc:
        raise PreferenceRefused("enrollment", str(exc)) from None
    session.flush()
    earliest = not_before(session, subscriber, now, day_seconds)
    for delivery in _waiting(session, subscriber_id):
        if delivery.enrollment_id != enrollment.id or delivery.state is DeliveryState.HELD:
            continue  # held: the sequence itself is paused, its resume sets the time
        waited = held_due.get(delivery.id)
        if waited is not None and waited >= earliest:
            # Still ahead of them: it keeps its time (catching up never brings a part before
            # its day on the timetable).
            continue
        if catch_up:
            due = _send_time_from(enrollment, subscriber, earliest, day_seconds, soonest=True)
        else:
            due = _send_time_from(enrollment, subscriber, earliest, day_seconds)
            if real_days(day_seconds) and subscriber.send_hour is None:
                # "Next send time" is the next opening of the window, not any instant in it.
                due = enrollment.sequence.window.next_opening(
                    earliest - timedelta(microseconds=1), subscriber.time_zone
                )
        _set_due(delivery, due)


def _timetable_step(
    session: Session, enrollment: Enrollment, now: datetime, day_seconds: float
) -> Step | None:
    """The furthest step the enrollment's timetable has due by now, if it is ahead of them."""
    had = set(
        session.scalars(select(Delivery.step_id).where(Delivery.enrollment_id == enrollment.id))
    )
    waiting = session.scalar(
        select(Step.position)
        .join(Delivery, Delivery.step_id == Step.id)
        .where(Delivery.enrollment_id == enrollment.id, Delivery.state.in_(OPEN_STATES))
    )
    started = enrollment.started_at or now
    target = None
    for step in sorted(enrollment.sequence.steps, key=lambda s: s.position):
        if step.removed_at is not None or step.id in had:
            continue
        due = step_due_at(
            started_at=started,
            day_offset=step.day_offset,
            time_zone=enrollment.subscriber.time_zone,
            window=enrollment.sequence.window,
            day_seconds=day_seconds,
        )
        if due <= now and (waiting is None or step.position > waiting):
            target = step
    return target


def restart(
    session: Session, subscriber_id: int, enrollment_id: int, now: datetime, day_seconds: float
) -> None:
    """Start one of the reader's series over from part 1 (the admin's restart, by the reader);
    part 1 comes at once, unless they had a part today: then on the next day."""
    subscriber = _subscriber(session, subscriber_id)
    enrollment = _enrollment(session, subscriber, enrollment_id)
    earliest = not_before(session, subscriber, now, day_seconds)
    try:
        fresh = moves.restart_enrollment(session, enrollment, now, by=BY, day_seconds=day_seconds)
    except ActionRefused as exc:
        raise PreferenceRefused("enrollment", str(exc)) from None
    _first_part_from(session, fresh, subscriber, earliest, day_seconds)


def _first_part_from(
    session: Session,
    enrollment: Enrollment,
    subscriber: Subscriber,
    earliest: datetime,
    day_seconds: float,
) -> None:
    """Part 1 of a new enrollment is due at once, unless `earliest` is later (`not_before`)."""
    session.flush()
    for delivery in session.scalars(
        select(Delivery).where(Delivery.enrollment_id == enrollment.id)
    ):
        if delivery.due_at < earliest:
            _set_due(delivery, _send_time_from(enrollment, subscriber, earliest, day_seconds))


def join(
    session: Session,
    subscriber_id: int,
    sequence_id: int,
    now: datetime,
    day_seconds: float,
    *,
    leaving: int | None = None,
) -> Enrollment:
    """Join another public sequence (part 1 as for a restart); the new enrollment.

    With `leaving`, one of the reader's series stops ("switched"), its waiting parts skipped:
    a switch. Refused for a draft or unknown sequence, one they are in or have finished
    (restart that one instead), or while a part is on its way to them.
    """
    subscriber = _subscriber(session, subscriber_id)
    sequence = session.get(Sequence, sequence_id)
    if sequence is None or sequence.status is SequenceStatus.DRAFT:
        raise PreferenceRefused("sequence", "Choose a series from the list.")
    try:
        moves.check_reachable(session, subscriber)
    except ActionRefused as exc:
        raise PreferenceRefused("sequence", str(exc)) from None
    had = session.scalar(
        select(Enrollment.status)
        .where(Enrollment.subscriber_id == subscriber_id, Enrollment.sequence_id == sequence_id)
        .order_by(Enrollment.id.desc())
        .limit(1)
    )
    if had in OPEN_ENROLLMENT_STATUSES:
        raise PreferenceRefused("sequence", f"You are already in {sequence.title}.")
    if had is EnrollmentStatus.COMPLETED:
        raise PreferenceRefused(
            "sequence", f"You finished {sequence.title}; restart it to read it again."
        )
    old = _enrollment(session, subscriber, leaving) if leaving is not None else None
    if old is not None and old.status not in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED):
        raise PreferenceRefused("enrollment", "That series is not running: join instead.")
    if _mid_send(session, subscriber_id):
        raise PreferenceRefused("sequence", MID_SEND)
    earliest = not_before(session, subscriber, now, day_seconds)
    if old is not None:
        _stop_switched(session, old, sequence, now)
    fresh = Enrollment(
        subscriber_id=subscriber_id,
        sequence_id=sequence_id,
        status=EnrollmentStatus.PENDING,
        created_at=now,
    )
    session.add(fresh)
    session.flush()
    planning.start_enrollment(session, fresh, now, day_seconds)
    _first_part_from(session, fresh, subscriber, earliest, day_seconds)
    holds.note(
        session,
        subscriber_id,
        "joined",
        {"sequence": sequence.slug, "reason": f"joined by {BY}"},
        now,
    )
    return fresh


def _stop_switched(session: Session, enrollment: Enrollment, to: Sequence, now: datetime) -> None:
    """End an enrollment the reader switched away from; its waiting parts are skipped."""
    reason = f"switched to {to.slug} by {BY}"
    enrollment.status = EnrollmentStatus.STOPPED
    enrollment.ended_at = now
    enrollment.stop_reason = StopReason.SWITCHED
    for delivery in session.scalars(
        select(Delivery).where(
            Delivery.enrollment_id == enrollment.id, Delivery.state.in_(OPEN_STATES)
        )
    ):
        delivery.state = DeliveryState.SKIPPED
        delivery.last_error = reason
    session.flush()
    holds.note(
        session,
        enrollment.subscriber_id,
        "switched",
        {"sequence": enrollment.sequence.slug, "reason": reason},
        now,
    )
