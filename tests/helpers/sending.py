"""Driving the send path from a test: subscribers, claims and deliveries on the test's app."""

from __future__ import annotations

from collections import Counter
from typing import Any

from flask import Flask
from sqlalchemy import select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.db import db
from newsletter.delivery import claims, sending
from newsletter.delivery.policy import Outcome
from newsletter.mail.transport import SmtpTransport
from newsletter.models import Delivery, DeliveryKind, Subscriber
from tests.helpers.apps import runtime_of


def active_subscriber(email: str, name: str | None = "Ann") -> int:
    """A confirmed subscriber whose part 1 is scheduled; returns the subscriber id."""
    now = clock.now()
    with db.transaction() as session:
        subscriptions.signup(
            session, subscriptions.SignupRequest(email=email, first_name=name), now
        )
    with db.transaction() as session:
        sub = session.scalars(select(Subscriber).where(Subscriber.email == email)).one()
        subscriptions.confirm(session, sub.id, sub.email, now, 86400)
        return sub.id


def claim_all() -> list[int]:
    with db.transaction() as session:
        return claims.claim_due(session, clock.now(), 100)


def deliver(app: Flask, delivery_id: int, transport: SmtpTransport | None = None) -> Outcome:
    """Send one claimed delivery; its outcome."""
    return next(iter(run_batch(app, [delivery_id], transport)))


def send_part_one(app: Flask, email: str) -> int:
    """A confirmed subscriber whose part 1 was sent through the app's own send path; their id."""
    subscriber_id = active_subscriber(email)
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    deliver(app, step_id)
    return subscriber_id


def delivery(delivery_id: int) -> Delivery:
    with db.session() as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        return row


def run_batch(
    app: Flask,
    ids: list[int],
    transport: SmtpTransport | None = None,
    **options: Any,
) -> Counter[Outcome]:
    """One batch of the given deliveries through the app's own composer and policy."""
    rt = runtime_of(app)
    with app.app_context():
        return sending.deliver_batch(
            db.engine,
            rt.composer,
            transport or SmtpTransport(rt.settings),
            ids,
            clock.now,
            rt.policy,
            **options,
        )
