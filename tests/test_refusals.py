"""A relay that refuses us, a relay that refuses everyone, a refused message: nobody pays for it.

Every case runs against the real SMTP server of the test (aiosmtpd), on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import func, select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.db import db
from newsletter.delivery import dispatch, sending
from newsletter.delivery.breaker import BounceBreaker
from newsletter.delivery.flow import FlowControl
from newsletter.models import (
    BreakerTrip,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from tests.helpers.apps import runtime_of
from tests.helpers.sending import active_subscriber, claim_all, delivery, run_batch
from tests.helpers.smtp import SmtpSink


class FakeWall:
    """A settable wall clock for flow control's pauses."""

    def __init__(self) -> None:
        self.now = clock.now().timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def flow(app: Flask) -> Iterator[tuple[FlowControl, FakeWall]]:
    """The app's own flow control (the one `flask status` reads) on a settable wall clock."""
    control = runtime_of(app).flow()
    wall = FakeWall()
    control.wall = wall
    yield control, wall


def send(
    app: Flask, ids: list[int], flow: FlowControl, breaker: BounceBreaker | None = None
) -> dict[sending.Outcome, int]:
    """One batch of the given deliveries, wired to flow control as a worker wires it."""
    hooks = sending.Hooks(should_stop=flow.paused, on_outcome=flow.record, on_hold=flow.hold)
    return dict(run_batch(app, ids, hooks=hooks, breaker=breaker))


def steps_of(ids: list[int]) -> list[int]:
    return [i for i in ids if delivery(i).kind is DeliveryKind.STEP]


def count(model: type[Suppression] | type[BreakerTrip] | type[Event], *where: object) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


@pytest.mark.parametrize(
    "reply", ["550 5.7.1 Sender address not allowed", "530 5.7.0 Authentication required"]
)
def test_relay_refusing_the_sender_pauses_and_suppresses_nobody(
    app: Flask, smtp_sink: SmtpSink, flow: tuple[FlowControl, FakeWall], reply: str
) -> None:
    control, wall = flow
    people = [active_subscriber(f"p{n}@example.org") for n in range(4)]
    with db.transaction() as session:  # and one who has not confirmed yet
        subscriptions.signup(
            session, subscriptions.SignupRequest(email="new@example.org"), clock.now()
        )
    ids = claim_all()
    smtp_sink.handler.mail_reply = reply
    outcomes = send(app, ids, control)
    # The first refusal pauses sending; the rest of the batch goes back to the queue unsent.
    assert outcomes.get(sending.Outcome.PAUSED) == 1
    assert sending.Outcome.BOUNCED not in outcomes and sending.Outcome.FAILED not in outcomes
    assert smtp_sink.messages == []
    assert count(Suppression) == 0
    with db.session() as session:
        statuses = {s.email: s.status for s in session.scalars(select(Subscriber))}
        enrollments = {e.status for e in session.scalars(select(Enrollment))}
        states = {d.state for d in session.scalars(select(Delivery))}
    assert statuses["new@example.org"] is SubscriberStatus.PENDING
    assert [statuses[f"p{n}@example.org"] for n in range(4)] == [SubscriberStatus.ACTIVE] * 4
    assert EnrollmentStatus.STOPPED not in enrollments
    assert states <= {DeliveryState.SCHEDULED, DeliveryState.RETRY, DeliveryState.SKIPPED}
    assert control.paused()
    pause = control.pause()
    assert pause is not None and reply[:3] in pause.reason and "MAIL FROM" in pause.reason
    status = app.test_cli_runner().invoke(args=["status"])
    assert "sending: PAUSED" in status.output and reply[:3] in status.output

    # The relay accepts again (the operator fixed MAIL_FROM or the password): once the pause
    # is over, sending resumes by itself and everyone gets their mail, once.
    smtp_sink.handler.mail_reply = None
    wall.now += 31
    assert not control.paused()
    again = send(app, claim_all(), control)
    assert again.get(sending.Outcome.SENT) == 5  # part 1 to four people, one confirmation
    assert sorted(str(m["To"].addresses[0].addr_spec) for m in smtp_sink.messages) == sorted(
        [f"p{n}@example.org" for n in range(4)] + ["new@example.org"]
    )
    assert control.pause() is None
    assert len(people) == 4


def test_a_refusal_that_returns_doubles_the_pause(
    app: Flask, smtp_sink: SmtpSink, flow: tuple[FlowControl, FakeWall]
) -> None:
    control, wall = flow
    for n in range(2):
        active_subscriber(f"d{n}@example.org")
    smtp_sink.handler.mail_reply = "554 5.7.1 Relay access denied"
    send(app, steps_of(claim_all()), control)
    first = control.pause()
    assert first is not None and first.until - wall.now == pytest.approx(30)
    wall.now += 31
    send(app, steps_of(claim_all()), control)
    second = control.pause()
    assert second is not None and second.until - wall.now == pytest.approx(60)
    assert count(Suppression) == 0


def test_relay_denied_at_rcpt_is_not_a_bounce(
    app: Flask, smtp_sink: SmtpSink, flow: tuple[FlowControl, FakeWall]
) -> None:
    control, _ = flow
    sub_id = active_subscriber("far@example.org")
    smtp_sink.handler.rcpt_reply = "554 5.7.1 <far@example.org>: Relay access denied"
    outcomes = send(app, steps_of(claim_all()), control)
    assert outcomes == {sending.Outcome.PAUSED: 1}
    with db.session() as session:
        subscriber = session.get(Subscriber, sub_id)
        assert subscriber is not None and subscriber.status is SubscriberStatus.ACTIVE
    assert count(Suppression) == 0 and control.paused()


def test_refused_message_fails_alone_and_the_series_goes_on(
    app: Flask, smtp_sink: SmtpSink, flow: tuple[FlowControl, FakeWall]
) -> None:
    control, _ = flow
    sub_id = active_subscriber("strict@example.org")
    smtp_sink.handler.data_reply = "554 5.7.1 Message rejected as spam"
    [step_id] = steps_of(claim_all())
    assert send(app, [step_id], control) == {sending.Outcome.REFUSED: 1}
    row = delivery(step_id)
    assert row.state is DeliveryState.FAILED and "5.7.1" in (row.last_error or "")
    assert count(Suppression) == 0 and not control.paused()
    assert count(Event, Event.kind == "refused") == 1
    with db.session() as session:
        subscriber = session.get(Subscriber, sub_id)
        assert subscriber is not None and subscriber.status is SubscriberStatus.ACTIVE
        following = session.scalars(
            select(Delivery).where(Delivery.kind == DeliveryKind.STEP, Delivery.id != step_id)
        ).one()
    # The reader misses the refused part, not the rest of the course.
    assert following.state is DeliveryState.SCHEDULED


def test_breaker_holds_sending_when_a_relay_rejects_every_recipient(
    app: Flask, smtp_sink: SmtpSink, flow: tuple[FlowControl, FakeWall]
) -> None:
    control, _ = flow
    tripped_from = clock.now()
    for n in range(10):
        active_subscriber(f"b{n}@example.org")
    ids = steps_of(claim_all())
    smtp_sink.handler.rcpt_reply = "550 5.1.1 User unknown"
    breaker = BounceBreaker(window=10, share=0.2)  # trips at the third refusal in ten sends
    outcomes = send(app, ids, control, breaker)
    assert outcomes == {sending.Outcome.BOUNCED: 3, sending.Outcome.HELD: 7}
    assert count(Suppression) == 3  # not ten: the list is not bounced away
    assert count(BreakerTrip, BreakerTrip.resumed_at.is_(None)) == 1
    assert control.paused() and control.pause() is not None and control.pause().held  # type: ignore[union-attr]

    # Held means held: the dispatcher claims nothing, a batch already queued sends nothing.
    rt = runtime_of(app)
    handed = dispatch.dispatch(
        db.session,
        clock.now(),
        dispatch_batch_size=100,
        send_batch_size=100,
        claim_timeout_seconds=600,
        enqueue=lambda ids, claim: None,
    )
    assert handed == 0
    runner = app.test_cli_runner()
    status = runner.invoke(args=["status"])
    assert "HELD by the bounce breaker" in status.output and "3 of the last 3" in status.output

    # The operator lists what the breaker let through, lifts it, and resumes.
    listed = runner.invoke(args=["suppressions", "list", "--since", tripped_from.isoformat()])
    assert listed.exit_code == 0 and "3 suppressed" in listed.output
    smtp_sink.handler.rcpt_reply = None
    lifted = runner.invoke(args=["suppressions", "lift", "--since", tripped_from.isoformat()])
    assert lifted.exit_code == 0, lifted.output
    assert "3 lifted" in lifted.output
    resumed = runner.invoke(args=["resume"])
    assert resumed.exit_code == 0 and "sending resumes" in resumed.output
    assert not control.paused() and count(BreakerTrip, BreakerTrip.resumed_at.is_(None)) == 0

    # Everyone, the three wrongly bounced included, gets part 1 exactly once.
    again = send(app, steps_of(claim_all()), control, breaker)
    assert again == {sending.Outcome.SENT: 10}
    got = sorted(str(m["To"].addresses[0].addr_spec) for m in smtp_sink.messages)
    assert got == sorted(f"b{n}@example.org" for n in range(10))
    with db.session() as session:
        assert {s.status for s in session.scalars(select(Subscriber))} == {SubscriberStatus.ACTIVE}
        assert {e.status for e in session.scalars(select(Enrollment))} == {EnrollmentStatus.ACTIVE}
    assert rt.settings.breaker_window == 100  # the deployment's default, for the README


def test_lifting_an_address_that_is_not_suppressed_changes_nothing(app: Flask) -> None:
    active_subscriber("kept@example.org")
    with db.transaction() as session:
        session.add(Suppression(email="gone@example.org", reason="bounce", created_at=clock.now()))
    result = app.test_cli_runner().invoke(
        args=["suppressions", "lift", "gone@example.org", "kept@example.org"]
    )
    assert result.exit_code != 0 and "kept@example.org is not on the suppression list" in (
        result.output
    )
    assert count(Suppression) == 1  # the first lift was rolled back with the error
    usage = app.test_cli_runner().invoke(args=["suppressions", "lift"])
    assert usage.exit_code != 0 and "--since" in usage.output
