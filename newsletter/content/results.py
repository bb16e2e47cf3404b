"""How a sequence is doing: its readers, and each part's results.

For each part: how many copies were sent, are still to go, failed or were skipped, how many
readers left (unsubscribed, bounced or complained) with that part as the last one they
received, which is where a course loses people, and the drop-off from the part before.
Counted from the delivery rows; nothing is tracked in the mail itself (no pixels, no
rewritten links).

A period (`PERIODS`: the last 7, 30 or 90 days, or all) chooses a cohort: the readers who
enrolled in it, followed through every part. A cohort is what a funnel compares: each part's
count is a subset of the same people, so the drop-off from one part to the next means
something, which counting the mails sent in the period would not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
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

_Row = TypeVar("_Row", bound=tuple[Any, ...])

# The periods a funnel may be asked for (a whitelist: the page offers these and no other),
# as days back from now; None is all time.
PERIODS: dict[str, int | None] = {"7": 7, "30": 30, "90": 90, "all": None}


def since_of(period: str, now: datetime) -> datetime | None:
    """The start of `period` (a key of PERIODS) before `now`; None for all time."""
    days = PERIODS[period]
    return None if days is None else now - timedelta(days=days)


@dataclass(frozen=True)
class PartResult:
    """One part's numbers; `left` is who left after it, by why they left."""

    position: int
    subject: str
    sent: int
    to_go: int
    failed: int
    skipped: int
    left: dict[SubscriberStatus, int]
    # The share of the previous part's readers this part has not reached (sent), 0 to 1;
    # None for the first part, or when the previous part reached nobody.
    drop_off: float | None

    @property
    def left_after(self) -> int:
        """Everyone who left after this part, whatever the reason."""
        return sum(self.left.values())


@dataclass(frozen=True)
class SequenceResults:
    """A sequence's readers by enrollment status, and its parts in order."""

    slug: str
    title: str
    readers: dict[EnrollmentStatus, int]
    parts: list[PartResult]


def _in_cohort(query: Select[_Row], since: datetime | None) -> Select[_Row]:
    """`query` over deliveries, narrowed to the readers who enrolled at or after `since`."""
    if since is None:
        return query
    # The cohort is read through ix_enrollments_sequence_created, the deliveries through
    # their (enrollment_id, step_id) key.
    return query.join(Enrollment, Enrollment.id == Delivery.enrollment_id).where(
        Enrollment.created_at >= since
    )


def sequence_results(
    session: Session, sequence: Sequence, since: datetime | None = None
) -> SequenceResults:
    """The readers and per-part results of `sequence`, in three grouped queries.

    With `since`, only the readers who enrolled at or after it (a cohort) are counted.
    """
    enrollments = select(Enrollment.status, func.count()).where(
        Enrollment.sequence_id == sequence.id
    )
    if since is not None:
        enrollments = enrollments.where(Enrollment.created_at >= since)
    readers = {
        status: int(count)
        for status, count in session.execute(enrollments.group_by(Enrollment.status))
    }
    states: dict[int, Counter[DeliveryState]] = {}
    for step_id, state, count in session.execute(
        _in_cohort(
            select(Delivery.step_id, Delivery.state, func.count())
            .join(Step, Step.id == Delivery.step_id)
            .where(Step.sequence_id == sequence.id)
            .group_by(Delivery.step_id, Delivery.state),
            since,
        )
    ):
        states.setdefault(step_id, Counter())[state] = int(count)
    # The last part each reader received; counted for those who have since gone.
    last_sent = _in_cohort(
        select(Delivery.subscriber_id, func.max(Step.position).label("position"))
        .join(Step, Step.id == Delivery.step_id)
        .where(Step.sequence_id == sequence.id, Delivery.state == DeliveryState.SENT)
        .group_by(Delivery.subscriber_id),
        since,
    ).subquery()
    left: dict[int, Counter[SubscriberStatus]] = {}
    for position, status, count in session.execute(
        select(last_sent.c.position, Subscriber.status, func.count())
        .join(Subscriber, Subscriber.id == last_sent.c.subscriber_id)
        .where(Subscriber.status.in_(GONE))
        .group_by(last_sent.c.position, Subscriber.status)
    ):
        left.setdefault(int(position), Counter())[status] = int(count)
    parts: list[PartResult] = []
    for step in sequence.steps:
        counts = states.get(step.id, Counter())
        sent = counts[DeliveryState.SENT]
        before = parts[-1].sent if parts else 0
        gone = left.get(step.position, Counter())
        parts.append(
            PartResult(
                position=step.position,
                subject=step.subject,
                sent=sent,
                to_go=sum(counts[state] for state in OPEN_STATES),
                failed=counts[DeliveryState.FAILED],
                skipped=counts[DeliveryState.SKIPPED],
                left={status: gone[status] for status in GONE},
                drop_off=max(0.0, 1 - sent / before) if before else None,
            )
        )
    return SequenceResults(sequence.slug, sequence.title, readers, parts)
