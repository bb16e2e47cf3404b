"""How a sequence is doing: its readers, and each part's results.

For each part: how many copies were sent, are still to go, failed or were skipped, how many
readers left (unsubscribed, bounced or complained) with that part as the last one they
received, which is where a course loses people, and the drop-off from the part before.
Counted from the delivery rows. Opens and clicks exist only for a sequence whose owner turned
tracking on (`delivery/tracking.py`): each part counts the mails opened and the mails with a
clicked link, once per mail however often it was opened or clicked.

A period (`PERIODS`: the last 7, 30 or 90 days, or all) chooses a cohort: the readers who
enrolled in it, followed through every part. A cohort is what a funnel compares: each part's
count is a subset of the same people, so the drop-off from one part to the next means
something, which counting the mails sent in the period would not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from newsletter.models import (
    OPEN_STATES,
    Click,
    Delivery,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Open,
    Sequence,
    Step,
    Subscriber,
    SubscriberStatus,
)

GONE = (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED)

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
    # Mails of this part whose open image loaded, and mails with a link clicked (tracked
    # sequences only; 0 otherwise). Defaults, so figures counted before tracking still load.
    opened: int = 0
    clicked: int = 0

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


def _per_step(
    session: Session, delivery_id: InstrumentedAttribute[int], cohort: list[ColumnElement[bool]]
) -> dict[int, int]:
    """Per step, the cohort's deliveries that have a row in `delivery_id`'s table (opens or
    clicks), each delivery once: from the cohort's deliveries through the table's key on
    delivery_id (the opens' primary key, the clicks' unique (delivery_id, link))."""
    counted = func.count(func.distinct(Delivery.id))
    return {
        int(step_id): int(count)
        for step_id, count in session.execute(
            select(Delivery.step_id, counted)
            .select_from(Enrollment)
            .join(Delivery, Delivery.enrollment_id == Enrollment.id)
            .join(delivery_id.class_, delivery_id == Delivery.id)
            .where(*cohort)
            .group_by(Delivery.step_id)
        )
    }


def sequence_results(
    session: Session, sequence: Sequence, since: datetime | None = None
) -> SequenceResults:
    """The readers and per-part results of `sequence`, in three grouped queries.

    With `since`, only the readers who enrolled at or after it (a cohort) are counted.
    """
    cohort = [Enrollment.sequence_id == sequence.id]
    if since is not None:
        cohort.append(Enrollment.created_at >= since)
    # Every count starts from the cohort's enrollments (ix_enrollments_sequence_created) and
    # reaches their deliveries through ix_deliveries_enrollment_state, an index-only read, so
    # a period costs its own readers, not the whole deliveries table.
    readers = {
        status: int(count)
        for status, count in session.execute(
            select(Enrollment.status, func.count()).where(*cohort).group_by(Enrollment.status)
        )
    }
    states: dict[int, Counter[DeliveryState]] = {}
    for step_id, state, count in session.execute(
        select(Delivery.step_id, Delivery.state, func.count())
        .select_from(Enrollment)
        .join(Delivery, Delivery.enrollment_id == Enrollment.id)
        .where(*cohort)
        .group_by(Delivery.step_id, Delivery.state)
    ):
        states.setdefault(step_id, Counter())[state] = int(count)
    # The last part each reader who has since gone received.
    last_sent = (
        select(Subscriber.status.label("status"), func.max(Step.position).label("position"))
        .select_from(Enrollment)
        .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
        .join(Delivery, Delivery.enrollment_id == Enrollment.id)
        .join(Step, Step.id == Delivery.step_id)
        .where(*cohort, Subscriber.status.in_(GONE), Delivery.state == DeliveryState.SENT)
        .group_by(Enrollment.id, Subscriber.status)
        .subquery()
    )
    opened = _per_step(session, Open.delivery_id, cohort)
    clicked = _per_step(session, Click.delivery_id, cohort)
    left: dict[int, Counter[SubscriberStatus]] = {}
    for position, status, count in session.execute(
        select(last_sent.c.position, last_sent.c.status, func.count()).group_by(
            last_sent.c.position, last_sent.c.status
        )
    ):
        left.setdefault(int(position), Counter())[SubscriberStatus(status)] = int(count)
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
                opened=opened.get(step.id, 0),
                clicked=clicked.get(step.id, 0),
            )
        )
    return SequenceResults(sequence.slug, sequence.title, readers, parts)
