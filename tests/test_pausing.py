"""Pausing and resuming: a whole sequence (content/pausing.py) and the engine's holds
(delivery/holds.py), with the claim, the last check before sending and the planner."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import select

from newsletter import clock
from newsletter.audience import moves, subscriptions
from newsletter.content.pausing import pause_sequence, resume_sequence
from newsletter.content.sequences import ensure_seed, sequence_for
from newsletter.db import db
from newsletter.delivery import planning
from newsletter.delivery.holds import ActionRefused
from newsletter.delivery.policy import Outcome
from newsletter.delivery.status import engine_status
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    Sequence,
    SequenceStatus,
)
from tests.helpers.apps import base_env, make_app
from tests.helpers.sending import active_subscriber, claim_all, deliver, delivery
from tests.helpers.smtp import SmtpSink

# Inside the seed sequence's 09:00-21:00 window for subscribers in UTC.
NOON = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)


def the_sequence() -> Sequence:
    with db.session() as session:
        return session.scalars(select(Sequence)).one()


def pause(at: datetime | None = None) -> int:
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        return pause_sequence(session, sequence, at or clock.now())


def resume(at: datetime | None = None) -> int:
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        return resume_sequence(session, sequence, at or clock.now())


def step_rows(subscriber_id: int) -> list[Delivery]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Delivery)
                .where(
                    Delivery.subscriber_id == subscriber_id, Delivery.kind != DeliveryKind.CONFIRM
                )
                .order_by(Delivery.id)
            )
        )


def events(subscriber_id: int, kind: str) -> list[Event]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Event).where(Event.subscriber_id == subscriber_id, Event.kind == kind)
            )
        )


def sent_first_part(app: Flask, email: str) -> int:
    """A subscriber whose part 1 went out (part 2 now waits); their id."""
    subscriber_id = active_subscriber(email)
    for delivery_id in claim_all():
        if delivery(delivery_id).kind is DeliveryKind.STEP:
            assert deliver(app, delivery_id) is Outcome.SENT
    return subscriber_id


def test_a_paused_sequence_holds_waiting_parts_and_the_claim_passes_them_by(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    ann = sent_first_part(app, "ann@example.org")
    bob = active_subscriber("bob@example.org")  # part 1 waiting, due now
    [part2] = [d for d in step_rows(ann) if d.state is DeliveryState.SCHEDULED]

    assert pause() == 2
    assert the_sequence().status is SequenceStatus.PAUSED
    assert {d.state for d in step_rows(bob)} == {DeliveryState.HELD}
    assert delivery(part2.id).state is DeliveryState.HELD
    assert delivery(part2.id).due_at == part2.due_at  # its place is kept
    # Days later, nothing of the sequence is claimed (bob's confirmation mail still is).
    at_time(NOON + timedelta(days=3))
    claimed = claim_all()
    assert all(delivery(i).kind is DeliveryKind.CONFIRM for i in claimed)
    assert [e.data["reason"] for e in events(ann, "paused")] == ["sequence paused by admin"]
    assert len(events(bob, "paused")) == 1
    with db.session() as session:
        status = engine_status(session, clock.now())
    assert status.held == 2 and status.paused_sequences == [the_sequence().slug]

    later = NOON + timedelta(days=3, hours=1)
    at_time(later)
    assert resume(later) == 2
    # Overdue while held: due now, and the give-up age counts from now.
    for row in (delivery(part2.id), step_rows(bob)[0]):
        assert row.state is DeliveryState.SCHEDULED
        assert row.due_at == row.first_due_at == later
    assert sorted(claim_all()) == sorted([part2.id, step_rows(bob)[0].id])
    assert len(events(ann, "resumed")) == 1


def test_a_part_claimed_before_the_pause_and_loaded_after_it_waits(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id = active_subscriber("cat@example.org")
    claimed = [i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP]
    assert pause() == 0  # a claimed row is the worker's: the pause does not touch it
    assert deliver(app, claimed[0]) is Outcome.HELD
    assert delivery(claimed[0]).state is DeliveryState.HELD
    assert not smtp_sink.to("cat@example.org")
    assert resume() == 1
    [again] = [i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP]
    assert again == claimed[0]
    assert deliver(app, again) is Outcome.SENT
    assert len(smtp_sink.to("cat@example.org")) == 1
    # And the series goes on: part 2 waits, scheduled.
    assert [d.state for d in step_rows(subscriber_id)] == [
        DeliveryState.SENT,
        DeliveryState.SCHEDULED,
    ]


def test_a_part_planned_while_paused_is_born_held(app: Flask, at_time: Any) -> None:
    at_time(NOON)
    subscriber_id = active_subscriber("dan@example.org")
    claim_all()
    [part1] = step_rows(subscriber_id)
    pause()
    # The mail was already on the wire when the pause came and is recorded after it: the
    # planner schedules the part after it, held.
    with db.session() as session:
        row = session.get(Delivery, part1.id)
        assert row is not None and row.enrollment is not None and row.step is not None
        follow = planning.follow_up(
            enrollment_id=row.enrollment_id or 0,
            subscriber_id=subscriber_id,
            started_at=row.enrollment.started_at or NOON,
            time_zone="UTC",
            window=row.step.sequence.window,
            step=row.step,
            steps=row.step.sequence.steps,
        )
    with db.engine.connect() as conn, conn.begin():
        planning.schedule_next(conn, [(follow, NOON)], NOON, 86400)
    states = [d.state for d in step_rows(subscriber_id)]
    assert states == [DeliveryState.CLAIMED, DeliveryState.HELD]
    # A part that fails for good while paused moves on to a held part too.
    with db.transaction() as session:
        row = session.get(Delivery, step_rows(subscriber_id)[1].id)
        assert row is not None
        row.state = DeliveryState.FAILED
        planning.move_on(session, row, NOON, 86400)
    assert [d.state for d in step_rows(subscriber_id)][-1] is DeliveryState.HELD


def test_someone_confirming_into_a_paused_sequence_is_enrolled_with_part_one_held(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    pause()
    subscriber_id = active_subscriber("eve@example.org")
    assert [d.state for d in step_rows(subscriber_id)] == [DeliveryState.HELD]
    with db.session() as session:
        enrollment = session.scalars(select(Enrollment)).one()
        assert enrollment.status is EnrollmentStatus.ACTIVE
    assert resume() == 1
    assert [delivery(i).kind for i in claim_all()] == [DeliveryKind.CONFIRM, DeliveryKind.STEP]


def test_resuming_the_sequence_leaves_a_person_paused_on_their_own(
    app: Flask, at_time: Any
) -> None:
    at_time(NOON)
    fay = active_subscriber("fay@example.org")
    gus = active_subscriber("gus@example.org")
    with db.transaction() as session:
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == fay)
        ).one()
        moves.pause_enrollment(session, enrollment, clock.now())
    pause()
    resume()
    assert [d.state for d in step_rows(fay)] == [DeliveryState.HELD]
    assert [d.state for d in step_rows(gus)] == [DeliveryState.SCHEDULED]


def test_pausing_twice_or_resuming_an_active_sequence_is_refused_and_changes_nothing(
    app: Flask,
) -> None:
    with pytest.raises(ActionRefused, match="not paused"):
        resume()
    pause()
    with pytest.raises(ActionRefused, match="paused; only an active one pauses"):
        pause()
    assert the_sequence().status is SequenceStatus.PAUSED


def test_a_draft_sequence_is_not_offered_to_signups(app: Flask) -> None:
    with db.transaction() as session:
        session.scalars(select(Sequence)).one().status = SequenceStatus.DRAFT
    slug = the_sequence().slug
    with db.session() as session:
        assert sequence_for(session, None) is None
        assert sequence_for(session, slug) is None
    with db.transaction() as session, pytest.raises(subscriptions.SignupError):
        subscriptions.signup(
            session, subscriptions.SignupRequest(email="hal@example.org"), clock.now()
        )
    with db.transaction() as session, pytest.raises(ActionRefused, match="draft"):
        pause_sequence(session, session.scalars(select(Sequence)).one(), clock.now())


def test_a_group_of_last_parts_completes_active_and_paused_enrollments(
    app: Flask, at_time: Any
) -> None:
    at_time(NOON)
    people = [active_subscriber(f"p{i}@example.org") for i in range(3)]
    with db.transaction() as session:
        paused_one = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == people[0])
        ).one()
        moves.pause_enrollment(session, paused_one, NOON)
        # Their parts went out: each row is recorded sent before what follows it is planned.
        for row in session.scalars(select(Delivery)):
            row.state = DeliveryState.SENT
    with db.session() as session:
        follows = [
            planning.FollowUp(e.id, e.subscriber_id, NOON, "UTC", e.sequence.window, None, 0)
            for e in session.scalars(select(Enrollment))
        ]
    # One recorded group, one executemany for every completion in it.
    with db.engine.connect() as conn, conn.begin():
        planning.schedule_next(conn, [(f, NOON) for f in follows], NOON, 86400)
    with db.session() as session:
        statuses = list(session.scalars(select(Enrollment.status)))
    assert statuses == [EnrollmentStatus.COMPLETED] * 3


@pytest.mark.postgres
def test_a_part_planned_while_a_resume_commits_is_not_left_held(
    tmp_path: Path, postgres_url: str, smtp_sink: SmtpSink
) -> None:
    """The planner reads the statuses under a share lock, so a resume waits for a part being
    planned as held and then lets it go too (without the lock it would wait for ever)."""
    make_app(base_env(tmp_path, postgres_url, smtp_sink))
    with db.transaction() as session:
        ensure_seed(session)
    subscriber_id = active_subscriber("ivy@example.org")
    claim_all()  # part 1 is on its way
    pause()
    with db.session() as session:
        enrollment = session.scalars(select(Enrollment)).one()
        follow = planning.FollowUp(
            enrollment.id,
            subscriber_id,
            NOON,
            "UTC",
            enrollment.sequence.window,
            enrollment.sequence.steps[1].id,
            1,
        )
    with db.engine.connect() as planner:
        planner.begin()
        planning.schedule_next(planner, [(follow, clock.now())], clock.now(), 86400)
        resumer = threading.Thread(target=resume)
        resumer.start()
        # Commit the planned part only once the resume waits for it (or has finished).
        with psycopg.connect(postgres_url, autocommit=True) as watcher:
            while (
                resumer.is_alive()
                and not watcher.execute("SELECT 1 FROM pg_locks WHERE NOT granted").fetchall()
            ):
                time.sleep(0.05)
        planner.commit()
    resumer.join(timeout=30)
    assert not resumer.is_alive()
    assert [d.state for d in step_rows(subscriber_id)] == [
        DeliveryState.CLAIMED,
        DeliveryState.SCHEDULED,
    ]
