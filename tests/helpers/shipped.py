"""The mails the product ships (the confirmation and the seed series), as subscribers get them."""

from __future__ import annotations

from datetime import datetime

from flask import Flask
from sqlalchemy import select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.db import db
from newsletter.mail.compose import Composer
from newsletter.mail.mime import Outgoing
from newsletter.mail.transport import SmtpTransport
from newsletter.models import Sequence, Subscriber
from tests.helpers.apps import runtime_of
from tests.helpers.smtp import SmtpSink


def part_mails(
    composer: Composer, subscriber: Subscriber, sequence: Sequence, now: datetime
) -> list[Outgoing]:
    """Every part of `sequence` as the sender builds it for `subscriber`."""
    return [composer.part(subscriber, step, sequence, now) for step in sequence.steps]


def send_shipped_mails(app: Flask, smtp_sink: SmtpSink) -> list[bytes]:
    """The confirmation and every part of the seed series, as sent; the bytes received."""
    rt = runtime_of(app)
    composer, transport = rt.composer, SmtpTransport(rt.settings)
    now = clock.now()
    with db.transaction() as session:
        subscriptions.signup(
            session, subscriptions.SignupRequest(email="zoe@example.org", first_name="Zoë"), now
        )
    with db.session() as session:
        sequence = session.scalars(select(Sequence).where(Sequence.is_default)).one()
        subscriber = session.scalars(select(Subscriber)).one()
        outgoing = [composer.wire(composer.confirmation(subscriber, sequence), subscriber, now)]
        outgoing += part_mails(composer, subscriber, sequence, now)
    for mail in outgoing:
        transport.send_data(mail.sender, mail.recipients, mail.data)
    return list(smtp_sink.handler.raw)
