"""Each sequence's readers and every part's results, counted from the delivery rows."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.content.results import sequence_results
from newsletter.db import db
from newsletter.models import DeliveryKind, EnrollmentStatus, Sequence
from tests.helpers.sending import active_subscriber, claim_all, deliver, delivery
from tests.helpers.smtp import SmtpSink


def test_parts_count_sent_waiting_skipped_and_who_left_after_them(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    active_subscriber("ann@example.org")
    bob = active_subscriber("bob@example.org", name=None)
    with db.transaction() as session:
        request = subscriptions.SignupRequest(email="cid@example.org", first_name=None)
        subscriptions.signup(session, request, clock.now())  # never confirms
    for delivery_id in claim_all():
        if delivery(delivery_id).kind is DeliveryKind.STEP:
            deliver(app, delivery_id)  # part 1 to Ann and Bob; part 2 is scheduled
    with db.transaction() as session:
        assert subscriptions.unsubscribe(session, bob, clock.now(), "one-click")

    with db.session() as session:
        results = sequence_results(session, session.scalars(select(Sequence)).one())
    assert results.slug == "emotional-distance"
    assert results.readers == {
        EnrollmentStatus.PENDING: 1,
        EnrollmentStatus.ACTIVE: 1,
        EnrollmentStatus.STOPPED: 1,
    }
    rows = [(p.position, p.sent, p.to_go, p.failed, p.skipped, p.left_after) for p in results.parts]
    assert rows == [
        (1, 2, 0, 0, 0, 1),  # both got part 1; Bob left after it
        (2, 0, 1, 0, 1, 0),  # Ann's part 2 is to go, Bob's was skipped
        (3, 0, 0, 0, 0, 0),
        (4, 0, 0, 0, 0, 0),
    ]

    output = app.test_cli_runner().invoke(args=["results"])
    assert output.exit_code == 0, output.output
    assert "readers: 1 pending, 1 active, 0 completed, 1 stopped" in output.output
    part_one = next(
        line.split() for line in output.output.splitlines() if line.split()[:1] == ["1"]
    )
    assert part_one[:6] == ["1", "2", "0", "0", "0", "1"]


def test_results_of_an_unknown_sequence_is_an_error(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["results", "--sequence", "nope"])
    assert result.exit_code != 0 and "no sequence 'nope'" in result.output
