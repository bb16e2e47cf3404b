"""A subscriber's story (audience/timeline.py): rows in time order, a sentence per reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter.audience import erasure, subscriptions, timeline
from newsletter.db import db
from newsletter.delivery import planning
from newsletter.models import (
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

# Sunday 29 Nov 2026, 20:00 UTC; part 2 is due Tuesday 1 Dec at 09:00 in Berlin (08:00 UTC).
NOW = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)
DUE = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def reader(*, part_two: DeliveryState, error: str | None = None) -> int:
    """A Berlin reader who got part 1 yesterday; part 2 is in the given state."""
    with db.transaction() as session:
        person = signed_up(
            session, "reader@example.org", NOW - timedelta(days=1), time_zone="Europe/Berlin"
        )
        steps = seed_steps(session)
        first = session.scalars(
            select(Delivery).where(
                Delivery.subscriber_id == person.id, Delivery.step_id == steps[0].id
            )
        ).one()
        first.state, first.sent_at, first.attempts = DeliveryState.SENT, NOW - timedelta(days=1), 1
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == person.id)
        ).one()
        second = planning.add_delivery(
            session,
            DeliveryKind.STEP,
            person.id,
            DUE,
            NOW,
            enrollment_id=enrollment.id,
            step_id=steps[1].id,
        )
        second.state, second.last_error = part_two, error
        if part_two is not DeliveryState.SCHEDULED:
            second.attempts = 2
        return person.id


def sentences(subscriber_id: int, now: datetime = NOW) -> list[str]:
    with db.session() as session:
        found = timeline.story(session, subscriber_id, now)
        assert found is not None
        return found.sentences


def test_a_part_due_says_when_in_their_zone_and_the_window(app: Flask) -> None:
    said = sentences(reader(part_two=DeliveryState.SCHEDULED))
    assert "Part 2 is due Tue 1 Dec 09:00 in their zone (Europe/Berlin; send window 9–21)." in said


def test_a_part_past_due_goes_with_the_next_dispatch(app: Flask) -> None:
    said = sentences(reader(part_two=DeliveryState.SCHEDULED), now=DUE + timedelta(minutes=1))
    assert (
        "Part 2 was due Tue 1 Dec 09:00 in their zone and goes out with the next dispatch." in said
    )


def test_a_failed_part_gives_the_servers_reply(app: Flask) -> None:
    said = sentences(reader(part_two=DeliveryState.FAILED, error="550 5.2.1 mailbox unavailable"))
    assert "Part 2 failed: 550 5.2.1 mailbox unavailable" in said


def test_a_retried_part_says_why_and_when_next(app: Flask) -> None:
    said = sentences(reader(part_two=DeliveryState.RETRY, error="451 try again later"))
    assert (
        "Part 2 is being retried after 2 attempt(s): 451 try again later; "
        "next try Tue 1 Dec 09:00 in their zone." in said
    )


def test_a_part_in_flight_and_a_skipped_one(app: Flask) -> None:
    assert "Part 2 is being sent now." in sentences(reader(part_two=DeliveryState.CLAIMED))


def test_unsubscribed_says_when_and_how(app: Flask) -> None:
    subscriber_id = reader(part_two=DeliveryState.SCHEDULED)
    with db.transaction() as session:
        subscriptions.unsubscribe(session, subscriber_id, NOW, source="one-click")
    said = sentences(subscriber_id)
    assert said[0] == "Stopped: unsubscribed on 29 Nov 2026 (one-click)."
    # The part that was due is skipped, and not announced as due any more.
    assert not any(" is due " in s for s in said)


def test_bounced_says_what_the_mailbox_answered(app: Flask) -> None:
    subscriber_id = reader(part_two=DeliveryState.FAILED, error="550 no such user")
    with db.transaction() as session:
        person = session.get(Subscriber, subscriber_id)
        assert person is not None
        person.status = SubscriberStatus.BOUNCED
        session.add(Suppression(email=person.email, reason="bounce", created_at=NOW))
        session.add(
            Event(
                subscriber_id=subscriber_id,
                kind="bounce",
                data={"detail": "550 no such user"},
                created_at=NOW,
            )
        )
    said = sentences(subscriber_id)
    assert said[0] == "Stopped: their mailbox refused a mail on 29 Nov 2026: 550 no such user"
    assert "Their address is on the suppression list (bounce): nothing more is sent to it." in said


def test_pending_and_finished(app: Flask) -> None:
    with db.transaction() as session:
        pending = signed_up(session, "later@example.org", NOW, confirm=False)
    said = sentences(pending.id)
    assert "They have not confirmed their address yet: no part is sent before." in said
    assert any(s.startswith("The confirmation mail ") for s in said)

    subscriber_id = reader(part_two=DeliveryState.SCHEDULED)
    with db.transaction() as session:
        for row in session.scalars(select(Delivery).where(Delivery.subscriber_id == subscriber_id)):
            row.state, row.sent_at = DeliveryState.SENT, NOW
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == subscriber_id)
        ).one()
        enrollment.status = EnrollmentStatus.COMPLETED
    said = sentences(subscriber_id)
    assert any(
        s.startswith("Finished “") and "2 part(s) sent, the last on 29 Nov 2026." in s for s in said
    )


def test_erased_says_so_first(app: Flask) -> None:
    subscriber_id = reader(part_two=DeliveryState.SCHEDULED)
    with db.transaction() as session:
        erasure.erase(session, subscriber_id, NOW)
    said = sentences(subscriber_id)
    assert said[0].startswith("Erased on 29 Nov 2026")


def test_entries_merge_deliveries_and_events_in_time_order(app: Flask) -> None:
    subscriber_id = reader(part_two=DeliveryState.SCHEDULED)
    with db.session() as session:
        found = timeline.story(session, subscriber_id, NOW)
    assert found is not None
    times = [entry.at for entry in found.entries]
    assert times == sorted(times)
    kinds = [
        (e.delivery.label if e.delivery else e.event.kind if e.event else "") for e in found.entries
    ]
    assert kinds[0] == "signup"
    assert any(k.startswith("Part 1: ") for k in kinds) and kinds[-1].startswith("Part 2: ")


@pytest.mark.any_database
def test_unknown_id_is_none(app: Flask) -> None:
    with db.session() as session:
        assert timeline.story(session, 987654, NOW) is None


def test_a_paused_person_and_their_held_part(app: Flask) -> None:
    from newsletter.audience import moves

    subscriber_id = reader(part_two=DeliveryState.SCHEDULED)
    with db.transaction() as session:
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == subscriber_id)
        ).one()
        moves.pause_enrollment(session, enrollment, NOW)
    said = sentences(subscriber_id)
    assert any(s.startswith("Paused in “") for s in said)
    assert (
        "Part 2 is held while they or the sequence are paused (due Tue 1 Dec 09:00 in their "
        "zone)." in said
    )
