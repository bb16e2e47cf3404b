"""The unsubscribe promise on a slow relay: once the page has answered, no further mail starts.

The last look (is this row still ours to send?) happens just before each message's MAIL FROM,
not once per group, and the unsubscribe page waits for the one message already in its SMTP
conversation. The relay here takes a second to answer each message's final dot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import DeliveryKind, Subscriber
from tests.faults.smtp import FaultSmtp
from tests.helpers.apps import base_env, make_app, runtime_of
from tests.helpers.sending import active_subscriber, claim_all, delivery, run_batch

PEOPLE = [f"r{n}@example.org" for n in range(8)]
REPLY_DELAY = 1.0


@pytest.fixture
def slow_relay() -> Iterator[FaultSmtp]:
    smtp = FaultSmtp()
    smtp.handler.data_delay = REPLY_DELAY  # the message is stored, the 250 comes a second later
    smtp.start()
    try:
        yield smtp
    finally:
        smtp.stop()


@pytest.fixture
def slow_app(tmp_path: Path, database_url: str, slow_relay: FaultSmtp) -> Iterator[Flask]:
    application = make_app(base_env(tmp_path, database_url, slow_relay.sink))
    with db.transaction() as session:
        ensure_seed(session)
    yield application
    db.dispose()


@pytest.mark.timing
@pytest.mark.slow
def test_no_mail_starts_after_the_unsubscribe_page_answered(
    slow_app: Flask, slow_relay: FaultSmtp
) -> None:
    app = slow_app
    for email in PEOPLE:
        active_subscriber(email)
    ids = [i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP]
    rt = runtime_of(app)

    def worker() -> None:
        run_batch(app, ids, group_size=10)  # the whole batch is one recording group

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        # The third person's message is on the wire (stored, its 250 not yet sent).
        slow_relay.wait_count(3, timeout=30)
        in_flight, later = PEOPLE[2], PEOPLE[6]
        client = app.test_client()
        answered: dict[str, float] = {}
        for email in (in_flight, later):
            token = rt.tokens.unsubscribe_token(_subscriber_id(email))
            response = client.post(f"/unsubscribe/{token}", data={})
            assert response.status_code == 200
            answered[email] = time.time()
    finally:
        thread.join(timeout=60)
    arrivals = slow_relay.arrivals
    by_person = {email: [a for a in arrivals if a.to == email] for email in PEOPLE}
    # The message already in its conversation arrives once, and the page answered only after
    # the relay had given its verdict on it.
    assert len(by_person[in_flight]) == 1
    assert answered[in_flight] >= by_person[in_flight][0].at + REPLY_DELAY - 0.05
    # ...and not only after the next message's conversation too.
    nxt = by_person[PEOPLE[3]][0].at
    assert answered[in_flight] < nxt + REPLY_DELAY
    # The later person's message had not started: it never does, although it belonged to the
    # same recording group as the one on the wire.
    assert by_person[later] == []
    rcpts_after = [r for r in slow_relay.handler.rcpts if r[1] == later]
    assert rcpts_after == []
    # Everyone else gets their part as usual.
    for email in PEOPLE:
        if email not in (in_flight, later):
            assert len(by_person[email]) == 1, email


def _subscriber_id(email: str) -> int:
    with db.session() as session:
        found = session.scalar(select(Subscriber.id).where(Subscriber.email == email))
    assert found is not None
    return found
