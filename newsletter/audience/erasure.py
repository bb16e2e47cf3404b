"""A person's data: everything held about them as JSON, and erasing it for good.

Erasing keeps the rows (deliveries, events, enrollments, and a tracked mail's opens and
clicks, which hold only times) so that counts and funnels stay true, but removes everything
personal from them: the address, the name, the consent record (IP, user agent, form), error
texts and event values that may quote the address. What remains of the address is its
SHA-256 on the suppression list, so that signup, import and every send refuse it forever
without the address being held anywhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from newsletter.audience.subscriptions import unsubscribe
from newsletter.models import (
    Click,
    Delivery,
    Enrollment,
    Event,
    Open,
    Step,
    Subscriber,
    SubscriberStatus,
    Suppression,
    address_hash,
)

# Event values known to hold nothing about the person; every other value goes on erasure
# (SMTP replies quote the address, a signup's form name is part of the consent record).
NEUTRAL_EVENT_KEYS = frozenset({"sequence", "source", "import", "consent"})
ERASED_TEXT = "(erased)"


def erased_address(subscriber_id: int) -> str:
    """The stand-in an erased subscriber's address becomes (unique, undeliverable: .invalid)."""
    return f"erased-{subscriber_id}@erased.invalid"


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def personal_data(session: Session, subscriber_id: int) -> dict[str, Any] | None:
    """Everything held about a subscriber, as JSON-ready values; None for an unknown id."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    enrollments = session.scalars(
        select(Enrollment).where(Enrollment.subscriber_id == subscriber_id).order_by(Enrollment.id)
    )
    deliveries = session.execute(
        select(Delivery, Step.position, Step.subject)
        .outerjoin(Step, Step.id == Delivery.step_id)
        .where(Delivery.subscriber_id == subscriber_id)
        .order_by(Delivery.due_at, Delivery.id)
    )
    events = session.scalars(
        select(Event).where(Event.subscriber_id == subscriber_id).order_by(Event.created_at)
    )
    mine = select(Delivery.id).where(Delivery.subscriber_id == subscriber_id)
    opened = dict(
        session.execute(select(Open.delivery_id, Open.opened_at).where(Open.delivery_id.in_(mine)))
        .tuples()
        .all()
    )
    clicked: dict[int, list[dict[str, Any]]] = {}
    for delivery_id, link, at in session.execute(
        select(Click.delivery_id, Click.link, Click.clicked_at)
        .where(Click.delivery_id.in_(mine))
        .order_by(Click.clicked_at)
    ):
        clicked.setdefault(delivery_id, []).append({"link": link, "at": _time(at)})
    suppressed = None
    if subscriber.erased_at is None:
        suppressed = session.scalar(
            select(Suppression).where(Suppression.email_hash == address_hash(subscriber.email))
        )
    return {
        "subscriber": {
            "id": subscriber.id,
            "email": subscriber.email,
            "first_name": subscriber.first_name,
            "time_zone": subscriber.time_zone,
            "send_hour": subscriber.send_hour,
            "status": subscriber.status.value,
            "created_at": _time(subscriber.created_at),
            "confirmed_at": _time(subscriber.confirmed_at),
            "unsubscribed_at": _time(subscriber.unsubscribed_at),
            "erased_at": _time(subscriber.erased_at),
        },
        "consent": {
            "at": _time(subscriber.consent_at),
            "ip": subscriber.consent_ip,
            "user_agent": subscriber.consent_user_agent,
            "form": subscriber.consent_form,
        },
        "enrollments": [
            {
                "sequence": e.sequence.slug,
                "status": e.status.value,
                "created_at": _time(e.created_at),
                "started_at": _time(e.started_at),
                "ended_at": _time(e.ended_at),
                "stop_reason": e.stop_reason,
            }
            for e in enrollments
        ],
        "deliveries": [
            {
                "kind": d.kind.value,
                "part": position,
                "subject": subject,
                "state": d.state.value,
                "due_at": _time(d.due_at),
                "sent_at": _time(d.sent_at),
                "attempts": d.attempts,
                "last_error": d.last_error,
                # Only for a mail of a sequence that tracked: its first open, its first
                # click on each link (by the link's number in the part).
                "opened_at": _time(opened.get(d.id)),
                "clicks": clicked.get(d.id, []),
            }
            for d, position, subject in deliveries
        ],
        "events": [{"kind": e.kind, "at": _time(e.created_at), "data": e.data} for e in events],
        "suppressed": (
            {"reason": suppressed.reason, "since": _time(suppressed.created_at)}
            if suppressed is not None
            else None
        ),
    }


def erase(session: Session, subscriber_id: int, now: datetime) -> bool:
    """Erase a subscriber's personal data, keep their rows anonymised; False for an unknown id.

    They are unsubscribed first (every open delivery skipped, source "erased"), and their
    address's hash goes on the suppression list. Erasing twice changes nothing more.
    """
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if subscriber is None:
        return False
    if subscriber.erased_at is not None:
        return True
    if subscriber.status in (SubscriberStatus.PENDING, SubscriberStatus.ACTIVE):
        unsubscribe(session, subscriber_id, now, source="erased")
    digest = address_hash(subscriber.email)
    entry = session.scalar(select(Suppression).where(Suppression.email_hash == digest))
    if entry is None:
        session.add(Suppression(email=None, email_hash=digest, reason="erased", created_at=now))
    else:
        # The entry stays (a bounce keeps refusing), without the address or the reply quoting it.
        entry.email = None
        entry.detail = None
    subscriber.email = erased_address(subscriber.id)
    subscriber.first_name = None
    subscriber.time_zone = "UTC"
    subscriber.send_hour = None
    subscriber.consent_ip = None
    subscriber.consent_user_agent = None
    subscriber.consent_form = None
    subscriber.erased_at = now
    session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.last_error.is_not(None))
        .values(last_error=ERASED_TEXT)
        .execution_options(synchronize_session=False)
    )
    for event in session.scalars(select(Event).where(Event.subscriber_id == subscriber_id)):
        kept = {k: v for k, v in event.data.items() if k in NEUTRAL_EVENT_KEYS}
        if kept != event.data:
            event.data = {**kept, "erased": True}
    session.add(Event(subscriber_id=subscriber_id, kind="erased", data={}, created_at=now))
    return True
