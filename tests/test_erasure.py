"""Erasing a person (audience/erasure.py): nothing personal left anywhere, refused forever."""

from __future__ import annotations

import json
from datetime import timedelta

from flask import Flask
from sqlalchemy import JSON, String, Text, func, select

from newsletter import clock
from newsletter.audience import erasure, subscriptions
from newsletter.db import db
from newsletter.delivery.policy import Outcome
from newsletter.models import (
    Base,
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
from tests.helpers.people import seed_steps, signed_up
from tests.helpers.sending import claim_all, deliver
from tests.helpers.smtp import SmtpSink

ADDRESS = "zelda.quill@example.org"
NAME = "Zeldaquill"


def person_with_history() -> int:
    """Signed up, confirmed, part 1 sent, part 2 bounced with a reply quoting the address."""
    now = clock.now()
    with db.transaction() as session:
        person = signed_up(session, ADDRESS, now - timedelta(days=2), first_name=NAME)
        rows = list(session.scalars(select(Delivery).where(Delivery.subscriber_id == person.id)))
        for row in rows:
            row.state, row.sent_at = DeliveryState.SENT, now - timedelta(days=1)
        step_row = next(r for r in rows if r.kind is DeliveryKind.STEP)
        step_row.last_error = f"451 <{ADDRESS}> greylisted, first try"
        session.add(
            Event(
                subscriber_id=person.id,
                delivery_id=step_row.id,
                kind="bounce",
                data={"detail": f"550 5.1.1 <{ADDRESS}>: user unknown"},
                created_at=now,
            )
        )
        session.add(
            Suppression(email=ADDRESS, reason="bounce", detail=f"550 <{ADDRESS}>", created_at=now)
        )
        return person.id


def everything_textual() -> list[str]:
    """Every text and JSON value of every table, as text."""
    found: list[str] = []
    with db.session() as session:
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, String | Text | JSON)]
            if not columns:
                continue
            for row in session.execute(select(*columns)):
                found += [json.dumps(v) if not isinstance(v, str) else v for v in row if v]
    return found


def test_export_holds_everything_about_them(app: Flask) -> None:
    subscriber_id = person_with_history()
    with db.session() as session:
        data = erasure.personal_data(session, subscriber_id)
    assert data is not None
    json.dumps(data)  # plain JSON values only
    assert data["subscriber"]["email"] == ADDRESS and data["subscriber"]["first_name"] == NAME
    assert data["consent"] == {
        "at": data["consent"]["at"],
        "ip": "203.0.113.9",
        "user_agent": "Mozilla/5.0 (test)",
        "form": "signup-page",
    }
    assert [e["status"] for e in data["enrollments"]] == ["active"]
    assert {d["kind"] for d in data["deliveries"]} == {"confirm", "step"}
    assert {e["kind"] for e in data["events"]} >= {"signup", "confirm", "bounce"}
    assert data["suppressed"]["reason"] == "bounce"


def test_erase_leaves_nothing_personal_in_any_table(app: Flask) -> None:
    subscriber_id = person_with_history()
    before = everything_textual()
    assert any(ADDRESS in v for v in before) and any(NAME in v for v in before)
    with db.session() as session:
        counts_before = {
            model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in (Delivery, Event, Enrollment)
        }
    with db.transaction() as session:
        assert erasure.erase(session, subscriber_id, clock.now())
    after = everything_textual()
    for needle in (ADDRESS, NAME, "zelda", "203.0.113.9", "Mozilla/5.0 (test)"):
        leaks = [v for v in after if needle.lower() in v.lower()]
        assert not leaks, f"{needle!r} is still held: {leaks[:3]}"
    with db.session() as session:
        # The rows stay for the counts (plus the "erased" event), anonymised.
        for model in (Delivery, Event, Enrollment):
            count = session.scalar(select(func.count()).select_from(model))
            assert count is not None
            extra = 2 if model is Event else 0  # the unsubscribe and the erasure
            assert count == counts_before[model.__tablename__] + extra
        person = session.get(Subscriber, subscriber_id)
        assert person is not None and person.erased_at is not None
        assert person.status is SubscriberStatus.UNSUBSCRIBED
        assert session.scalars(select(Enrollment)).one().status is EnrollmentStatus.STOPPED
        entry = session.scalars(select(Suppression)).one()
        assert entry.email is None and entry.email_hash is not None
    with db.transaction() as session:
        assert erasure.erase(session, subscriber_id, clock.now()), "erasing twice is harmless"


def test_an_erased_address_is_refused_at_signup_and_at_sending(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    now = clock.now()
    with db.transaction() as session:
        person = signed_up(session, ADDRESS, now, first_name=NAME)
        erasure.erase(session, person.id, now)
    with db.transaction() as session:
        outcome = subscriptions.signup(
            session, subscriptions.SignupRequest(email=ADDRESS.upper(), first_name=NAME), now
        )
        assert outcome is subscriptions.SignupOutcome.IGNORED
        assert session.scalar(select(func.count()).where(Subscriber.email == ADDRESS)) == 0
    # Should the address come back by any other path, sending still refuses it.
    with db.transaction() as session:
        back = Subscriber(email=ADDRESS, status=SubscriberStatus.ACTIVE, created_at=now)
        session.add(back)
        session.flush()
        enrollment = Enrollment(
            subscriber_id=back.id,
            sequence_id=seed_steps(session)[0].sequence_id,
            status=EnrollmentStatus.ACTIVE,
            started_at=now,
        )
        session.add(enrollment)
        session.flush()
        session.add(
            Delivery(
                kind=DeliveryKind.STEP,
                subscriber_id=back.id,
                enrollment_id=enrollment.id,
                step_id=seed_steps(session)[0].id,
                due_at=now,
                first_due_at=now,
            )
        )
    claimed = claim_all()
    assert claimed
    assert {deliver(app, i) for i in claimed} == {Outcome.SKIPPED}
    assert smtp_sink.messages == []
