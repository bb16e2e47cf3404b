"""How a sequence is doing: its readers, and each part's results.

For each part: how many copies were sent, are still to go, failed or were skipped, and how
many readers left (unsubscribed, bounced or complained) with that part as the last one they
received, which is where a course loses people. Counted from the delivery rows; nothing is
tracked in the mail itself (no pixels, no rewritten links).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.models import (
    OPEN_STATES,
    Delivery,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    Step,
    Subscriber,
    SubscriberStatus,
)

GONE = (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED)


@dataclass(frozen=True)
class PartResult:
    """One part's numbers."""

    position: int
    subject: str
    sent: int
    to_go: int
    failed: int
    skipped: int
    left_after: int


@dataclass(frozen=True)
class SequenceResults:
    """A sequence's readers by enrollment status, and its parts in order."""

    slug: str
    title: str
    readers: dict[EnrollmentStatus, int]
    parts: list[PartResult]


def sequence_results(session: Session, sequence: Sequence) -> SequenceResults:
    """The readers and per-part results of `sequence`, in three grouped queries."""
    readers = {
        status: int(count)
        for status, count in session.execute(
            select(Enrollment.status, func.count())
            .where(Enrollment.sequence_id == sequence.id)
            .group_by(Enrollment.status)
        )
    }
    states: dict[int, Counter[DeliveryState]] = {}
    for step_id, state, count in session.execute(
        select(Delivery.step_id, Delivery.state, func.count())
        .join(Step, Step.id == Delivery.step_id)
        .where(Step.sequence_id == sequence.id)
        .group_by(Delivery.step_id, Delivery.state)
    ):
        states.setdefault(step_id, Counter())[state] = int(count)
    # The last part each reader received; counted for those who have since gone.
    last_sent = (
        select(Delivery.subscriber_id, func.max(Step.position).label("position"))
        .join(Step, Step.id == Delivery.step_id)
        .where(Step.sequence_id == sequence.id, Delivery.state == DeliveryState.SENT)
        .group_by(Delivery.subscriber_id)
        .subquery()
    )
    left = {
        int(position): int(count)
        for position, count in session.execute(
            select(last_sent.c.position, func.count())
            .join(Subscriber, Subscriber.id == last_sent.c.subscriber_id)
            .where(Subscriber.status.in_(GONE))
            .group_by(last_sent.c.position)
        )
    }
    parts = []
    for step in sequence.steps:
        counts = states.get(step.id, Counter())
        parts.append(
            PartResult(
                position=step.position,
                subject=step.subject,
                sent=counts[DeliveryState.SENT],
                to_go=sum(counts[state] for state in OPEN_STATES),
                failed=counts[DeliveryState.FAILED],
                skipped=counts[DeliveryState.SKIPPED],
                left_after=left.get(step.position, 0),
            )
        )
    return SequenceResults(sequence.slug, sequence.title, readers, parts)
