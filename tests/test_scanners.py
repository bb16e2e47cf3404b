"""Mail security scanners open every link of every mail: none of those GETs may change anything.

The mails are the real ones (the confirmation and the four parts of the seed series), sent by
the engine to a real SMTP server and read back; the scanner follows every link in them, GET and
HEAD, with no cookies. After each request the subscriber, enrollment, delivery and event rows
are exactly as before. Only the person's POST on the confirm page confirms. SQLite and
PostgreSQL.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from newsletter.db import db
from newsletter.delivery import sending
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    Event,
    Subscriber,
    SubscriberStatus,
)
from tests.helpers.apps import runtime_of
from tests.helpers.mailparse import html_of, link, part_number, text_of
from tests.helpers.sending import claim_all, deliver, delivery
from tests.helpers.smtp import SmtpSink
from tests.helpers.webclient import confirm, post_signup

EMAIL = "scan@example.org"
TABLES: tuple[Any, ...] = (Subscriber, Enrollment, Delivery, Event)

Snapshot = dict[str, list[tuple[object, ...]]]


def snapshot() -> Snapshot:
    """Every column of every row of the tables a click could change."""
    state: Snapshot = {}
    with db.session() as session:
        for model in TABLES:
            columns = list(model.__table__.columns)
            rows = session.execute(select(*columns).order_by(model.id)).all()
            state[model.__tablename__] = [tuple(row) for row in rows]
    return state


def links_in(msg: EmailMessage) -> set[str]:
    """Every http(s) URL in the HTML (href and src) and in the text part."""
    found = {html.unescape(u) for u in re.findall(r'(?:href|src)="(https?://[^"]+)"', html_of(msg))}
    found |= set(re.findall(r"https?://[^\s<>\"')\]]+", text_of(msg)))
    return found


def https_unsubscribe(msg: EmailMessage) -> str:
    match = re.search(r"<(https://[^>]+)>", str(msg["List-Unsubscribe"]))
    assert match, msg["List-Unsubscribe"]
    return match.group(1)


def scan(app: Flask, urls: set[str]) -> int:
    """GET and HEAD every URL on this site, as a cookie-less scanner; check nothing changed."""
    site = runtime_of(app).settings.site_url
    scanner: FlaskClient = app.test_client(use_cookies=False)
    requests = 0
    for url in sorted(urls):
        assert url.startswith(f"{site}/"), f"a link off the site cannot be checked here: {url}"
        path = url.removeprefix(site)
        for method in ("GET", "HEAD"):
            before = snapshot()
            response = scanner.open(path, method=method)
            assert response.status_code == 200, f"{method} {path}: {response.status_code}"
            assert snapshot() == before, f"{method} {path} changed the database"
            requests += 1
    return requests


def send_due(app: Flask) -> list[int]:
    sent = []
    for delivery_id in claim_all():
        if deliver(app, delivery_id) is sending.Outcome.SENT:
            sent.append(delivery_id)
    return sent


def next_step_due() -> datetime | None:
    with db.session() as session:
        return session.scalar(
            select(Delivery.due_at).where(
                Delivery.kind == DeliveryKind.STEP, Delivery.state == DeliveryState.SCHEDULED
            )
        )


def test_scanner_gets_on_every_link_of_every_mail_change_nothing(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    person = app.test_client()
    assert post_signup(person, EMAIL, first_name="Sam")[:2] == (303, "/thanks")
    assert len(send_due(app)) == 1
    confirmation = smtp_sink.messages[-1]
    assert str(confirmation["Subject"]).startswith("Confirm your subscription")
    confirmation_links = links_in(confirmation)
    assert any("/confirm/" in url for url in confirmation_links)

    requests = scan(app, confirmation_links)
    with db.session() as session:
        row = session.scalars(select(Subscriber)).one()
    assert row.status is SubscriberStatus.PENDING, "a scanner's GET confirmed the address"

    response = confirm(person, link(confirmation, "confirm"))  # the person's click: a POST
    assert response.status_code == 200 and "You're in" in response.get_data(as_text=True)

    parts: list[EmailMessage] = []
    while True:
        for delivery_id in send_due(app):
            if delivery(delivery_id).kind is DeliveryKind.STEP:
                part = smtp_sink.messages[-1]
                parts.append(part)
                unsubscribe = https_unsubscribe(part)
                requests += scan(app, links_in(part) | {unsubscribe})
                assert "/unsubscribe/" in unsubscribe
        due = next_step_due()
        if due is None:
            break
        at_time(due + timedelta(seconds=1))

    assert [part_number(p) for p in parts] == [(k, 4) for k in range(1, 5)]
    with db.session() as session:
        row = session.scalars(select(Subscriber)).one()
        enrollment = session.scalars(select(Enrollment)).one()
    assert row.status is SubscriberStatus.ACTIVE and enrollment.status.value == "completed"
    # Every part links to itself, the archive and the unsubscribe page, and the confirmation
    # to its confirm page: each of those was opened twice (GET and HEAD).
    assert requests >= 2 * (1 + 4 * 3)
