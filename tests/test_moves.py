"""An admin's moves for one person (audience/moves.py): pause, resume, restart, move to a
step, resend a step; each refused move changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.audience import moves, subscriptions
from newsletter.db import db
from newsletter.delivery.holds import ActionRefused
from newsletter.delivery.policy import Outcome
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    Step,
    StopReason,
    Subscriber,
    Suppression,
    address_hash,
)
from tests.helpers.mailparse import part_number, text_of
from tests.helpers.sending import active_subscriber, claim_all, deliver, delivery
from tests.helpers.smtp import SmtpSink

NOON = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)


def enrollments(subscriber_id: int) -> list[Enrollment]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Enrollment)
                .where(Enrollment.subscriber_id == subscriber_id)
                .order_by(Enrollment.id)
            )
        )


def rows(subscriber_id: int) -> list[tuple[DeliveryKind, int | None, int, DeliveryState]]:
    """(kind, enrollment, part, state) of each of a subscriber's part deliveries, in order."""
    with db.session() as session:
        return [
            (d.kind, d.enrollment_id, position, d.state)
            for d, position in session.execute(
                select(Delivery, Step.position)
                .join(Step, Step.id == Delivery.step_id)
                .where(Delivery.subscriber_id == subscriber_id)
                .order_by(Delivery.id)
            )
        ]


def timeline(subscriber_id: int) -> list[tuple[str, str]]:
    with db.session() as session:
        return [
            (e.kind, e.data.get("reason", ""))
            for e in session.scalars(
                select(Event).where(Event.subscriber_id == subscriber_id).order_by(Event.id)
            )
            if "reason" in e.data
        ]


def send_due(app: Flask) -> None:
    """Send every due part now (confirmations of active people are skipped)."""
    for delivery_id in claim_all():
        deliver(app, delivery_id)


def step(session: Session, position: int) -> Step:
    return session.scalars(select(Step).where(Step.position == position)).one()


def act(fn: Any, subscriber_id: int, *positions: int) -> Any:
    """Run a move on the subscriber's latest enrollment (and the steps at `positions`)."""
    with db.transaction() as session:
        enrollment = session.scalars(
            select(Enrollment)
            .where(Enrollment.subscriber_id == subscriber_id)
            .order_by(Enrollment.id.desc())
            .limit(1)
        ).one()
        steps = [step(session, position) for position in positions]
        return fn(session, enrollment, *steps, clock.now())


def resend(subscriber_id: int, position: int) -> Delivery:
    with db.transaction() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        assert subscriber is not None
        return moves.resend_step(session, subscriber, step(session, position), clock.now())


def parts_received(sink: SmtpSink, email: str) -> list[int]:
    return [part_number(m)[0] for m in sink.to(email) if "Part " in text_of(m)]


def test_pause_holds_one_person_and_resume_lets_them_go_on(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    ann = active_subscriber("ann@example.org")
    bob = active_subscriber("bob@example.org")
    assert act(moves.pause_enrollment, ann) == 1
    assert enrollments(ann)[0].status is EnrollmentStatus.PAUSED
    send_due(app)
    assert parts_received(smtp_sink, "ann@example.org") == []
    assert parts_received(smtp_sink, "bob@example.org") == [1]
    with pytest.raises(ActionRefused, match="paused; only an active one pauses"):
        act(moves.pause_enrollment, ann)
    assert act(moves.resume_enrollment, ann) == 1
    send_due(app)
    assert parts_received(smtp_sink, "ann@example.org") == [1]
    with pytest.raises(ActionRefused, match="active, not paused"):
        act(moves.resume_enrollment, ann)
    assert timeline(ann) == [("paused", "paused by admin"), ("resumed", "resumed by admin")]
    assert rows(bob)[-1][2:] == (2, DeliveryState.SCHEDULED)


def test_restart_stops_the_old_enrollment_and_sends_part_one_again(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    cat = active_subscriber("cat@example.org")
    send_due(app)
    old = enrollments(cat)[0]
    fresh = act(moves.restart_enrollment, cat)
    assert [e.status for e in enrollments(cat)] == [
        EnrollmentStatus.STOPPED,
        EnrollmentStatus.ACTIVE,
    ]
    assert enrollments(cat)[0].stop_reason == StopReason.RESTARTED
    assert rows(cat) == [
        (DeliveryKind.STEP, old.id, 1, DeliveryState.SENT),
        (DeliveryKind.STEP, old.id, 2, DeliveryState.SKIPPED),
        (DeliveryKind.STEP, fresh.id, 1, DeliveryState.SCHEDULED),
    ]
    with db.session() as session:
        skipped = session.scalars(
            select(Delivery).where(
                Delivery.state == DeliveryState.SKIPPED, Delivery.kind == DeliveryKind.STEP
            )
        ).one()
        assert skipped.last_error == "restarted by admin"
    send_due(app)
    assert parts_received(smtp_sink, "cat@example.org") == [1, 1]
    assert timeline(cat) == [("restarted", "restarted by admin")]
    # The old enrollment cannot be restarted again; only one open enrollment per sequence.
    with db.transaction() as session, pytest.raises(ActionRefused, match="stopped"):
        moves.restart_enrollment(session, session.get(Enrollment, old.id), clock.now())  # type: ignore[arg-type]
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.add(Enrollment(subscriber_id=cat, sequence_id=old.sequence_id, status="active"))


def test_move_to_step_goes_forward_only(app: Flask, smtp_sink: SmtpSink, at_time: Any) -> None:
    at_time(NOON)
    dan = active_subscriber("dan@example.org")
    send_due(app)  # part 1 sent, part 2 waits for tomorrow
    moved = act(moves.move_to_step, dan, 4)
    assert moved.state is DeliveryState.SCHEDULED
    assert abs(moved.due_at - NOON) < timedelta(minutes=1)  # due now
    assert [r[2:] for r in rows(dan)] == [
        (1, DeliveryState.SENT),
        (2, DeliveryState.SKIPPED),
        (4, DeliveryState.SCHEDULED),
    ]
    before = rows(dan)
    for target, reason in ((1, "already had step 1"), (2, "already had step 2"), (3, "behind")):
        with pytest.raises(ActionRefused, match=reason):
            act(moves.move_to_step, dan, target)
    assert rows(dan) == before
    send_due(app)
    assert parts_received(smtp_sink, "dan@example.org") == [1, 4]
    assert enrollments(dan)[0].status is EnrollmentStatus.COMPLETED
    assert timeline(dan) == [("moved", "moved to step 4 by admin")]
    with pytest.raises(ActionRefused, match="completed"):
        act(moves.move_to_step, dan, 4)


def test_move_of_a_paused_person_waits_with_them(app: Flask, at_time: Any) -> None:
    at_time(NOON)
    eve = active_subscriber("eve@example.org")
    act(moves.pause_enrollment, eve)
    act(moves.move_to_step, eve, 3)
    assert [r[2:] for r in rows(eve)] == [(1, DeliveryState.SKIPPED), (3, DeliveryState.HELD)]
    act(moves.resume_enrollment, eve)
    assert [r[2:] for r in rows(eve)][-1] == (3, DeliveryState.SCHEDULED)


def test_resend_arrives_and_moves_nothing(app: Flask, smtp_sink: SmtpSink, at_time: Any) -> None:
    at_time(NOON)
    fay = active_subscriber("fay@example.org")
    send_due(app)
    before = rows(fay)

    with pytest.raises(ActionRefused, match="not had step 2"):
        resend(fay, 2)
    copy = resend(fay, 1)
    assert copy.kind is DeliveryKind.RESEND and copy.enrollment_id is None
    with pytest.raises(ActionRefused, match="already on its way"):
        resend(fay, 1)
    send_due(app)
    assert delivery(copy.id).state is DeliveryState.SENT
    assert parts_received(smtp_sink, "fay@example.org") == [1, 1]
    resent = smtp_sink.to("fay@example.org")[-1]
    assert resent["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert resent["Message-ID"] != smtp_sink.to("fay@example.org")[-2]["Message-ID"]
    # The enrollment is where it was: part 2 still waits, nothing else was planned.
    assert rows(fay) == [*before, (DeliveryKind.RESEND, None, 1, DeliveryState.SENT)]
    assert timeline(fay) == [("resent", "step 1 resent by admin")]

    with db.transaction() as session:
        subscriptions.unsubscribe(session, fay, clock.now(), "test")
    with pytest.raises(ActionRefused, match="unsubscribed, not active"):
        resend(fay, 1)
    with pytest.raises(ActionRefused, match="unsubscribed, not active"):
        act(moves.restart_enrollment, fay)


def test_a_resend_to_an_address_suppressed_after_its_claim_is_skipped(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    gus = active_subscriber("gus@example.org")
    send_due(app)
    copy = resend(gus, 1)
    assert claim_all() == [copy.id]
    with db.transaction() as session:
        session.add(Suppression(email="gus@example.org", reason="operator"))
    assert deliver(app, copy.id) is Outcome.SKIPPED
    assert delivery(copy.id).last_error == "address is suppressed"
    assert parts_received(smtp_sink, "gus@example.org") == [1]


def test_a_move_for_an_address_suppressed_by_its_hash_alone_is_refused(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    """An erased entry keeps only the address's digest: a move still finds it and changes
    nothing."""
    at_time(NOON)
    hal = active_subscriber("hal@example.org")
    send_due(app)
    before = rows(hal)
    with db.transaction() as session:
        session.add(
            Suppression(email=None, email_hash=address_hash("hal@example.org"), reason="erased")
        )
    with pytest.raises(ActionRefused, match="suppression list"):
        resend(hal, 1)
    with pytest.raises(ActionRefused, match="suppression list"):
        act(moves.restart_enrollment, hal)
    assert rows(hal) == before
