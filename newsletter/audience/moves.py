"""An admin's moves for one person: pause, resume, restart, move to a step, resend a step.

Each move checks first and raises `ActionRefused` with a reason to show, before anything is
written; each one it makes is told on the subscriber's timeline as an event saying what and
why ("paused by admin", "moved to step 4 by admin"). People only move forward: a step they
already had is reached again by a restart (a new enrollment from part 1, the old one's
history kept) or a resend (one extra copy that moves nothing on), never by moving back.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

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
    SequenceStatus,
    Step,
    StopReason,
    Subscriber,
    SubscriberStatus,
    Suppression,
    address_hash,
)
from newsletter.schedule import REAL_DAY

__all__ = [
    "ActionRefused",
    "move_to_step",
    "pause_enrollment",
    "restart_enrollment",
    "resend_step",
    "resume_enrollment",
]


def _lock(session: Session, enrollment: Enrollment) -> None:
    """Take the person's row lock (see `holds.lock_person`) and read the enrollment afresh."""
    holds.lock_person(session, enrollment.subscriber_id)
    session.refresh(enrollment)


def check_reachable(session: Session, subscriber: Subscriber) -> None:
    """Refuse a move that would mail someone who left or is suppressed."""
    if subscriber.status is not SubscriberStatus.ACTIVE:
        raise ActionRefused(
            f"{subscriber.email} is {subscriber.status.value}, not active: nothing can be sent."
        )
    # By digest: an erased person's entry keeps no address, only its digest.
    digest = address_hash(subscriber.email)
    suppressed = session.scalar(select(Suppression.id).where(Suppression.email_hash == digest))
    if suppressed is not None:
        raise ActionRefused(f"{subscriber.email} is on the suppression list: nothing can be sent.")


def pause_enrollment(
    session: Session, enrollment: Enrollment, now: datetime, by: str = "admin"
) -> int:
    """Pause one person's way through a sequence: their waiting part is held; how many rows.

    A mail already claimed by a worker is not called back once it is being sent; the part
    after it is born held. Raises ActionRefused unless the enrollment is active.
    """
    _lock(session, enrollment)
    if enrollment.status is not EnrollmentStatus.ACTIVE:
        raise ActionRefused(
            f"This enrollment is {enrollment.status.value}; only an active one pauses."
        )
    enrollment.status = EnrollmentStatus.PAUSED
    session.flush()
    held = holds.hold(session, holds.of_enrollment(enrollment.id))
    holds.note(
        session,
        enrollment.subscriber_id,
        "paused",
        {"sequence": enrollment.sequence.slug, "reason": f"paused by {by}"},
        now,
    )
    return held


def resume_enrollment(
    session: Session, enrollment: Enrollment, now: datetime, by: str = "admin"
) -> int:
    """Resume a paused person where they were: their held part is due, no sooner than now.

    While the sequence itself is paused the part stays held until the sequence resumes.
    Returns how many rows were let go. Raises ActionRefused unless the enrollment is paused.
    """
    _lock(session, enrollment)
    if enrollment.status is not EnrollmentStatus.PAUSED:
        raise ActionRefused(f"This enrollment is {enrollment.status.value}, not paused.")
    enrollment.status = EnrollmentStatus.ACTIVE
    session.flush()
    reason = f"resumed by {by}"
    released = 0
    if planning.sequence_paused(session, enrollment.sequence_id):
        reason += " (the sequence is paused: nothing is sent until it resumes)"
    else:
        released = holds.release(session, holds.of_enrollment(enrollment.id), now)
    holds.note(
        session,
        enrollment.subscriber_id,
        "resumed",
        {"sequence": enrollment.sequence.slug, "reason": reason},
        now,
    )
    return released


def restart_enrollment(
    session: Session,
    enrollment: Enrollment,
    now: datetime,
    by: str = "admin",
    *,
    day_seconds: float = REAL_DAY,
) -> Enrollment:
    """Start a person's sequence over: a new enrollment, part 1 due now; the new enrollment.

    An active or paused enrollment stops with the reason "restarted" and its unsent parts
    are skipped with that reason (a mail already on the wire still arrives); a completed one
    stays completed. Its history stays as it was. Raises ActionRefused for someone who
    cannot be mailed, or an enrollment that is pending, stopped, or not the person's latest
    in that sequence.
    """
    _lock(session, enrollment)
    subscriber = enrollment.subscriber
    check_reachable(session, subscriber)
    if enrollment.sequence.status is SequenceStatus.DRAFT:
        raise ActionRefused("The sequence is a draft: it sends nothing yet.")
    if enrollment.status not in (
        EnrollmentStatus.ACTIVE,
        EnrollmentStatus.PAUSED,
        EnrollmentStatus.COMPLETED,
    ):
        raise ActionRefused(
            f"This enrollment is {enrollment.status.value}; only an active, paused or "
            "completed one restarts."
        )
    newer = session.scalar(
        select(Enrollment.id).where(
            Enrollment.subscriber_id == enrollment.subscriber_id,
            Enrollment.sequence_id == enrollment.sequence_id,
            Enrollment.status.in_(OPEN_ENROLLMENT_STATUSES),
            Enrollment.id != enrollment.id,
        )
    )
    if newer is not None:
        raise ActionRefused("This person already has a newer enrollment in this sequence.")
    reason = f"restarted by {by}"
    if enrollment.status is not EnrollmentStatus.COMPLETED:
        enrollment.status = EnrollmentStatus.STOPPED
        enrollment.ended_at = now
        enrollment.stop_reason = StopReason.RESTARTED
        session.execute(
            update(Delivery)
            .where(Delivery.enrollment_id == enrollment.id, Delivery.state.in_(OPEN_STATES))
            .values(state=DeliveryState.SKIPPED, last_error=reason)
            .execution_options(synchronize_session=False)
        )
        # The old enrollment leaves the open ones before the new one joins them.
        session.flush()
    fresh = Enrollment(
        subscriber_id=enrollment.subscriber_id,
        sequence_id=enrollment.sequence_id,
        status=EnrollmentStatus.PENDING,
        created_at=now,
    )
    session.add(fresh)
    session.flush()
    planning.start_enrollment(session, fresh, now, day_seconds)
    holds.note(
        session,
        enrollment.subscriber_id,
        "restarted",
        {"sequence": enrollment.sequence.slug, "reason": reason, "previous": enrollment.id},
        now,
    )
    return fresh


def move_to_step(
    session: Session,
    enrollment: Enrollment,
    step: Step,
    now: datetime,
    by: str = "admin",
) -> Delivery:
    """Move a person forward to a step they have not had: it is their next part, due now.

    Their waiting part is skipped with the reason (its own history, its own Message-ID) and
    the step's part is added due now, held while they or the sequence are paused; the send
    window applies to it as to any part. Returns that delivery. Raises ActionRefused for a
    step of another sequence, one they had or passed (restart or resend reach those), a part
    being sent right now, or an enrollment that is not active or paused.
    """
    _lock(session, enrollment)
    if enrollment.status not in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED):
        raise ActionRefused(
            f"This enrollment is {enrollment.status.value}; only an active or paused one moves."
        )
    check_reachable(session, enrollment.subscriber)
    if step.sequence_id != enrollment.sequence_id:
        raise ActionRefused("That step belongs to another sequence.")
    rows: list[tuple[Delivery, int]] = [
        (row, int(position))
        for row, position in session.execute(
            select(Delivery, Step.position)
            .join(Step, Step.id == Delivery.step_id)
            .where(Delivery.enrollment_id == enrollment.id)
            # A claim skips rows locked here, so the part being moved cannot go meanwhile.
            .with_for_update(of=Delivery)
        )
    ]
    if any(row.state is DeliveryState.CLAIMED for row, _ in rows):
        raise ActionRefused("A part is being sent to this person right now; try again shortly.")
    current = next(((row, pos) for row, pos in rows if row.state in OPEN_STATES), None)
    settled = [(row, pos) for row, pos in rows if row.state not in OPEN_STATES]
    had = next((row for row, _ in settled if row.step_id == step.id), None)
    if had is not None:
        raise ActionRefused(
            f"They already had step {step.position} ({had.state.value}); people only move "
            "forward: restart the sequence or resend that step instead."
        )
    place = max(
        [pos for _, pos in settled] + ([current[1]] if current is not None else []), default=0
    )
    if step.position < place or (current is None and step.position <= place):
        raise ActionRefused(
            f"Step {step.position} is behind their place (step {place}); people only move "
            "forward: restart the sequence or resend that step instead."
        )
    reason = f"moved to step {step.position} by {by}"
    from_step = current[1] if current is not None else None
    if current is not None and current[0].step_id == step.id:
        delivery = current[0]  # their next part already: it is due now
        delivery.due_at = delivery.first_due_at = now
        if delivery.state is DeliveryState.RETRY:
            delivery.state = DeliveryState.SCHEDULED
    else:
        if current is not None:
            current[0].state = DeliveryState.SKIPPED
            current[0].last_error = reason
        delivery = planning.add_part(session, enrollment, step.id, now, now)
    session.flush()
    holds.note(
        session,
        enrollment.subscriber_id,
        "moved",
        {
            "sequence": enrollment.sequence.slug,
            "from_step": from_step,
            "to_step": step.position,
            "reason": reason,
        },
        now,
        delivery_id=delivery.id,
    )
    return delivery


def resend_step(
    session: Session, subscriber: Subscriber, step: Step, now: datetime, by: str = "admin"
) -> Delivery:
    """Send a person one more copy of a step they had, due now; the new delivery.

    The copy is a delivery of its own kind (`DeliveryKind.RESEND`, no enrollment): built like
    the step's mail, with the same unsubscribe headers, and it moves nothing on. It waits
    while the step's sequence is paused. Raises ActionRefused for someone who cannot be
    mailed, a step they have not had (move them to it instead), or a resend of it already
    waiting.
    """
    holds.lock_person(session, subscriber.id)
    session.refresh(subscriber)
    check_reachable(session, subscriber)
    sent = session.scalar(
        select(Delivery.id).where(
            Delivery.subscriber_id == subscriber.id,
            Delivery.step_id == step.id,
            Delivery.kind == DeliveryKind.STEP,
            Delivery.state == DeliveryState.SENT,
        )
    )
    if sent is None:
        raise ActionRefused(
            f"They have not had step {step.position} yet; to send it now, move them to it."
        )
    waiting = session.scalar(
        select(Delivery.id).where(
            Delivery.subscriber_id == subscriber.id,
            Delivery.step_id == step.id,
            Delivery.kind == DeliveryKind.RESEND,
            Delivery.state.in_(OPEN_STATES),
        )
    )
    if waiting is not None:
        raise ActionRefused(f"A resend of step {step.position} is already on its way.")
    delivery = planning.add_delivery(
        session,
        DeliveryKind.RESEND,
        subscriber.id,
        now,
        now,
        step_id=step.id,
        held=planning.sequence_paused(session, step.sequence_id),
    )
    session.flush()
    holds.note(
        session,
        subscriber.id,
        "resent",
        {
            "sequence": step.sequence.slug,
            "step": step.position,
            "reason": f"step {step.position} resent by {by}",
        },
        now,
        delivery_id=delivery.id,
    )
    return delivery
