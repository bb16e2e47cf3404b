"""The reader's view of a series: the parts received (the web archive, nothing ahead) and
when the next one comes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    Step,
)
from newsletter.schedule import step_due_at


def received_steps(session: Session, subscriber_id: int) -> list[Step]:
    """Steps whose mail reached this subscriber, by sequence and part, each once."""
    steps = session.scalars(
        select(Step)
        .join(Delivery, Delivery.step_id == Step.id)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.kind == DeliveryKind.STEP,
            Delivery.state == DeliveryState.SENT,
            # A step a published version removed leaves the archive with the series.
            Step.removed_at.is_(None),
        )
        .options(joinedload(Step.sequence).selectinload(Sequence.steps))
        .order_by(Step.sequence_id, Step.position)
    ).unique()
    return list(dict.fromkeys(steps))


def received_step(session: Session, subscriber_id: int, step_id: int) -> Step | None:
    """One received step, or None if this subscriber has not been sent it (yet)."""
    return next((s for s in received_steps(session, subscriber_id) if s.id == step_id), None)


@dataclass(frozen=True)
class Course:
    """One series of a reader's archive: the parts received, and whether more will come."""

    title: str
    total: int
    parts: list[tuple[int, int, str]]  # (step id, position, subject), in order
    more_to_come: bool


def courses(session: Session, subscriber_id: int) -> list[Course]:
    """The reader's archive, a Course per series they received parts of.

    More comes while their enrollment in that series is active or paused and a live part is
    still ahead of them; after the last part, or once they left, nothing more is promised.
    """
    by_sequence: dict[int, list[Step]] = {}
    for step in received_steps(session, subscriber_id):
        by_sequence.setdefault(step.sequence_id, []).append(step)
    open_ones = set(
        session.scalars(
            select(Enrollment.sequence_id).where(
                Enrollment.subscriber_id == subscriber_id,
                Enrollment.status.in_((EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED)),
            )
        )
    )
    found = []
    for sequence_id, steps in by_sequence.items():
        sequence = steps[0].sequence
        last = max(step.position for step in steps)
        ahead = any(step.position > last for step in sequence.steps)
        found.append(
            Course(
                title=sequence.title,
                total=len(sequence.steps),
                parts=[(step.id, step.position, step.subject) for step in steps],
                more_to_come=sequence_id in open_ones and ahead,
            )
        )
    return found


@dataclass(frozen=True)
class NextPart:
    """The part a reader gets after the one on its way, and when."""

    position: int
    total: int
    due: datetime
    time_zone: str


def after_the_first(
    session: Session, subscriber_id: int, now: datetime, day_seconds: float
) -> NextPart | None:
    """Right after confirming: when part 2 of the series they joined comes (None for a
    one-part series), by the rule that will schedule it once part 1 has gone."""
    enrollment = session.scalars(
        select(Enrollment)
        .where(
            Enrollment.subscriber_id == subscriber_id,
            Enrollment.status == EnrollmentStatus.ACTIVE,
        )
        .order_by(Enrollment.id.desc())
        .limit(1)
    ).first()
    if enrollment is None:
        return None
    sequence = enrollment.sequence
    steps = list(sequence.steps)
    if len(steps) < 2:
        return None
    subscriber = enrollment.subscriber
    time_zone = subscriber.time_zone
    due = step_due_at(
        started_at=enrollment.started_at or now,
        day_offset=steps[1].day_offset,
        time_zone=time_zone,
        window=sequence.window,
        day_seconds=day_seconds,
        previous_sent_at=now,
        send_hour=subscriber.send_hour,
    )
    return NextPart(position=steps[1].position, total=len(steps), due=due, time_zone=time_zone)
