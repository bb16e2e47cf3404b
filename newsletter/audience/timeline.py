"""A subscriber's story: every delivery and event in time order, and why they got what they got.

The sentences at the top answer the question admins are asked most ("why didn't I get day
3?") in the words of the state machine (models.py): a part that is due, being retried, being
sent, failed, or skipped, and whether the person stopped, bounced or was erased.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from newsletter.models import (
    OPEN_STATES,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    SequenceStatus,
    Step,
    Subscriber,
    SubscriberStatus,
    Suppression,
    address_hash,
)
from newsletter.schedule import SendWindow, zone

# Events of one person are few; this bounds a page for a pathological one.
MAX_EVENTS = 1000


@dataclass(frozen=True)
class DeliveryLine:
    """One delivery as the timeline shows it."""

    id: int
    kind: DeliveryKind
    step_id: int | None
    sequence: str | None
    position: int | None
    subject: str | None
    state: DeliveryState
    due_at: datetime
    sent_at: datetime | None
    attempted_at: datetime | None
    attempts: int
    last_error: str | None

    @property
    def label(self) -> str:
        """ "Part 3: <subject>" or "Confirmation mail"."""
        if self.kind is DeliveryKind.CONFIRM:
            return "Confirmation mail"
        if self.position is None:
            return f"A removed step: {self.subject}"
        copy = " (a copy sent again)" if self.kind is DeliveryKind.RESEND else ""
        return f"Part {self.position}{copy}: {self.subject}"


@dataclass(frozen=True)
class EventLine:
    """One event as the timeline shows it."""

    kind: str
    data: dict[str, Any]
    delivery_id: int | None


@dataclass(frozen=True)
class Entry:
    """A line of the timeline: a delivery (at its send or due time) or an event."""

    at: datetime
    delivery: DeliveryLine | None = None
    event: EventLine | None = None


@dataclass(frozen=True)
class EnrollmentLine:
    """A sequence the person is in, and how far."""

    id: int
    sequence_id: int
    sequence: str
    status: EnrollmentStatus
    started_at: datetime | None
    ended_at: datetime | None
    stop_reason: str | None


@dataclass(frozen=True)
class Story:
    """Everything the detail page shows about one subscriber."""

    subscriber: Subscriber
    suppression: Suppression | None
    enrollments: list[EnrollmentLine]
    entries: list[Entry]
    sentences: list[str]


def local_time(moment: datetime, time_zone: str) -> str:
    """A time as the person lives it: "Tue 1 Dec 09:00"."""
    local = moment.astimezone(zone(time_zone))
    return f"{local:%a} {local.day} {local:%b %H:%M}"


def _day(moment: datetime) -> str:
    return f"{moment.day} {moment:%b %Y}"


def _window(window: SendWindow) -> str:
    names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    days = (
        ""
        if len(window.weekdays) == 7
        else ", " + " ".join(names[d - 1] for d in sorted(window.weekdays))
    )
    return f"send window {window.start_hour}–{window.end_hour}{days}"


def _short(error: str | None) -> str:
    text = " ".join((error or "no reason recorded").split())
    return text if len(text) <= 200 else text[:199] + "…"


def _delivery_sentence(
    delivery: Delivery, subscriber: Subscriber, now: datetime, window: SendWindow | None
) -> str | None:
    name = "The confirmation mail" if delivery.kind is DeliveryKind.CONFIRM else None
    if name is None and delivery.step is not None and delivery.step.removed_at is None:
        name = f"Part {delivery.step.position}"
        if delivery.kind is DeliveryKind.RESEND:
            name = f"A copy of part {delivery.step.position}"
    name = name or "A mail"
    zone_name = subscriber.time_zone
    when = local_time(delivery.due_at, zone_name)
    if delivery.state is DeliveryState.SCHEDULED:
        if delivery.due_at <= now:
            return f"{name} was due {when} in their zone and goes out with the next dispatch."
        where = f" ({zone_name}; {_window(window)})" if window is not None else f" ({zone_name})"
        return f"{name} is due {when} in their zone{where}."
    if delivery.state is DeliveryState.RETRY:
        return (
            f"{name} is being retried after {delivery.attempts} attempt(s): "
            f"{_short(delivery.last_error)}; next try {when} in their zone."
        )
    if delivery.state is DeliveryState.CLAIMED:
        return f"{name} is being sent now."
    if delivery.state is DeliveryState.HELD:
        return f"{name} is held while they or the sequence are paused (due {when} in their zone)."
    if delivery.state is DeliveryState.FAILED:
        return f"{name} failed: {_short(delivery.last_error)}"
    if delivery.state is DeliveryState.SKIPPED:
        return f"{name} was skipped: {_short(delivery.last_error)}"
    return None


def _leaving_sentence(subscriber: Subscriber, events: list[Event]) -> str | None:
    def latest(kind: str) -> Event | None:
        return next((e for e in reversed(events) if e.kind == kind), None)

    if subscriber.erased_at is not None:
        return (
            f"Erased on {_day(subscriber.erased_at)}: their personal data is gone and the "
            "address is refused for good."
        )
    if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
        event = latest("unsubscribe")
        at = subscriber.unsubscribed_at or (event.created_at if event else None)
        source = f" ({event.data.get('source')})" if event and event.data.get("source") else ""
        return f"Stopped: unsubscribed on {_day(at)}{source}." if at else "Stopped: unsubscribed."
    if subscriber.status is SubscriberStatus.BOUNCED:
        event = latest("bounce")
        detail = f": {_short(str(event.data.get('detail')))}" if event else ""
        on = f" on {_day(event.created_at)}" if event else ""
        return f"Stopped: their mailbox refused a mail{on}{detail}"
    if subscriber.status is SubscriberStatus.COMPLAINED:
        return "Stopped: they reported a mail as spam."
    return None


def explain(
    subscriber: Subscriber,
    enrollments: list[Enrollment],
    deliveries: list[Delivery],
    events: list[Event],
    suppression: Suppression | None,
    now: datetime,
) -> list[str]:
    """The plain sentences at the top of the timeline, most important first."""
    sentences: list[str] = []
    leaving = _leaving_sentence(subscriber, events)
    if leaving:
        sentences.append(leaving)
    if suppression is not None and subscriber.erased_at is None:
        sentences.append(
            f"Their address is on the suppression list ({suppression.reason}): "
            "nothing more is sent to it."
        )
    if subscriber.status is SubscriberStatus.PENDING:
        sentences.append("They have not confirmed their address yet: no part is sent before.")
    for delivery in deliveries:
        if delivery.state in (DeliveryState.FAILED, DeliveryState.SKIPPED) and leaving is None:
            sentence = _delivery_sentence(delivery, subscriber, now, None)
            if sentence:
                sentences.append(sentence)
    for enrollment in enrollments:
        open_rows = [
            d for d in deliveries if d.enrollment_id == enrollment.id and d.state in OPEN_STATES
        ]
        title = enrollment.sequence.title
        if enrollment.status is EnrollmentStatus.COMPLETED:
            sent = [
                d
                for d in deliveries
                if d.enrollment_id == enrollment.id and d.state is DeliveryState.SENT
            ]
            last = max((d.sent_at for d in sent if d.sent_at), default=None)
            on = f", the last on {_day(last)}" if last else ""
            sentences.append(f"Finished “{title}”: {len(sent)} part(s) sent{on}.")
        if enrollment.status is EnrollmentStatus.PAUSED:
            sentences.append(f"Paused in “{title}”: nothing more is sent until they are resumed.")
        elif enrollment.sequence.status is SequenceStatus.PAUSED:
            sentences.append(f"The sequence “{title}” is paused: nothing of it is sent for now.")
        for delivery in open_rows:
            sentence = _delivery_sentence(delivery, subscriber, now, enrollment.sequence.window)
            if sentence:
                sentences.append(sentence)
        if enrollment.status is EnrollmentStatus.ACTIVE and not open_rows:
            sentences.append(f"No part of “{title}” is planned right now.")
    for delivery in deliveries:
        if delivery.enrollment_id is None and delivery.state in OPEN_STATES:
            sentence = _delivery_sentence(delivery, subscriber, now, None)
            if sentence:
                sentences.append(sentence)
    return sentences


def _delivery_line(delivery: Delivery) -> DeliveryLine:
    step = delivery.step
    return DeliveryLine(
        id=delivery.id,
        kind=delivery.kind,
        step_id=delivery.step_id,
        sequence=step.sequence.title if step is not None else None,
        position=step.position if step is not None and step.removed_at is None else None,
        subject=step.subject if step is not None else None,
        state=delivery.state,
        due_at=delivery.due_at,
        sent_at=delivery.sent_at,
        attempted_at=delivery.attempted_at,
        attempts=delivery.attempts,
        last_error=delivery.last_error,
    )


def story(session: Session, subscriber_id: int, now: datetime) -> Story | None:
    """A subscriber's timeline and its sentences; None for an unknown id."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    enrollments = list(
        session.scalars(
            select(Enrollment)
            .options(joinedload(Enrollment.sequence))
            .where(Enrollment.subscriber_id == subscriber_id)
            .order_by(Enrollment.id)
        )
    )
    deliveries = list(
        session.scalars(
            select(Delivery)
            .options(joinedload(Delivery.step).joinedload(Step.sequence))
            .where(Delivery.subscriber_id == subscriber_id)
            .order_by(Delivery.due_at, Delivery.id)
        )
    )
    events = list(
        session.scalars(
            select(Event)
            .where(Event.subscriber_id == subscriber_id)
            .order_by(Event.created_at, Event.id)
            .limit(MAX_EVENTS)
        )
    )
    suppression = None
    if subscriber.erased_at is None:
        suppression = session.scalar(
            select(Suppression).where(Suppression.email_hash == address_hash(subscriber.email))
        )
    entries = [Entry(at=d.sent_at or d.due_at, delivery=_delivery_line(d)) for d in deliveries]
    entries += [
        Entry(at=e.created_at, event=EventLine(kind=e.kind, data=e.data, delivery_id=e.delivery_id))
        for e in events
    ]
    # At the same instant the event comes first: a signup before the mail it planned.
    entries.sort(key=lambda entry: (entry.at, entry.delivery is not None))
    return Story(
        subscriber=subscriber,
        suppression=suppression,
        enrollments=[
            EnrollmentLine(
                id=e.id,
                sequence_id=e.sequence_id,
                sequence=e.sequence.title,
                status=e.status,
                started_at=e.started_at,
                ended_at=e.ended_at,
                stop_reason=e.stop_reason,
            )
            for e in enrollments
        ],
        entries=entries,
        sentences=explain(subscriber, enrollments, deliveries, events, suppression, now),
    )
