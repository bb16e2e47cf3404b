"""Publishing while the worker sends: PostgreSQL, Redis, a real Celery worker and beat, SMTP.

People are seated at every place of the sequence (not confirmed yet, part 1 due, waiting on
each later step, retrying, finished), their waiting parts coming due while the worker runs, so
that the edits are published while some of them are being sent.
Two publishes land mid-run (retried while mails of the sequence are being sent): a new step
after step 2, then the old step 3 removed. From what the SMTP sink received, each person got
every step at most once and in order, nothing of the removed step after its removal, and the
new step reached exactly those the dry run moved to it plus those who had not passed it yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.content import drafts, publishing
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import (
    Delivery,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    Sequence,
    SequenceVersion,
    Step,
    Subscriber,
)
from tests.helpers.apps import base_env, make_app
from tests.helpers.crowd import seat
from tests.helpers.smtp import SmtpSink
from tests.helpers.workers import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

DAY = 6.0  # seconds in a drip day: parts of one person are at least DAY / 2 apart
TICK = 0.3
WAVE = 4  # people per wave


@pytest.fixture
def live(
    tmp_path: Path,
    smtp_sink: SmtpSink,
    postgres_url: str,
    redis_url: str,
    run_worker: Callable[..., WorkerProcess],
) -> tuple[Flask, WorkerProcess]:
    env = base_env(
        tmp_path,
        postgres_url,
        smtp_sink,
        BROKER_URL=redis_url,
        REDIS_URL=redis_url,
        DRIP_DAY_SECONDS=str(DAY),
        DISPATCH_INTERVAL_SECONDS=str(TICK),
    )
    app = make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
    return app, run_worker(env, concurrency=2)


S = DeliveryState
# Where people sit when the run starts: the steps they had (sent) and the one they wait on.
PLACES: list[tuple[str, EnrollmentStatus, dict[int, DeliveryState]]] = [
    ("wait1", EnrollmentStatus.ACTIVE, {1: S.SCHEDULED}),
    ("wait2", EnrollmentStatus.ACTIVE, {1: S.SENT, 2: S.SCHEDULED}),
    ("wait3", EnrollmentStatus.ACTIVE, {1: S.SENT, 2: S.SENT, 3: S.SCHEDULED}),
    ("retry3", EnrollmentStatus.ACTIVE, {1: S.SENT, 2: S.SENT, 3: S.RETRY}),
    ("wait4", EnrollmentStatus.ACTIVE, {1: S.SENT, 2: S.SENT, 3: S.SENT, 4: S.SCHEDULED}),
    ("finished", EnrollmentStatus.COMPLETED, {1: S.SENT, 2: S.SENT, 3: S.SENT, 4: S.SENT}),
]


def seat_everyone(keys: list[str]) -> dict[int, list[str]]:
    """WAVE people at each place, their waiting parts coming due over the next day while the
    worker runs; the steps each subscriber had before, by subscriber id."""
    now = clock.now()
    had: dict[int, list[str]] = {}
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        for place, (name, status, rows) in enumerate(PLACES):
            for i in range(WAVE):
                enrollment_id = seat(
                    session,
                    sequence,
                    f"{name}-{i}@example.org",
                    status,
                    rows,
                    now=now,
                    due=now + timedelta(seconds=0.5 + DAY * (i * len(PLACES) + place) / 24),
                    day=timedelta(seconds=DAY),
                )
                enrollment = session.get(Enrollment, enrollment_id)
                assert enrollment is not None
                had[enrollment.subscriber_id] = [
                    keys[n - 1] for n, state in rows.items() if state is S.SENT
                ]
    return had


def had_steps(session: Session) -> dict[int, set[str]]:
    """The step keys each subscriber has a sent, failed, skipped or claimed delivery of."""
    had: dict[int, set[str]] = {}
    rows = session.execute(
        select(Delivery.subscriber_id, Step.key)
        .join(Step, Step.id == Delivery.step_id)
        .where(Delivery.state.in_(publishing.HAD_STATES))
    )
    for subscriber_id, key in rows:
        had.setdefault(subscriber_id, set()).add(key)
    return had


def publish_when_free(
    edit: Callable[[Session, SequenceVersion], object],
) -> tuple[SequenceVersion, int, dict[int, set[str]]]:
    """Draft an edit and publish it, again and again while mails are being sent (bounded):
    the version, how many tries it took, and what each subscriber had had just before."""
    with db.transaction() as session:
        edit(session, drafts.draft_of(session, session.scalars(select(Sequence)).one()))
    deadline = time.monotonic() + 60
    tries = 0
    while True:
        tries += 1
        try:
            with db.transaction() as session:
                had = had_steps(session)
                sequence = session.scalars(select(Sequence)).one()
                done = publishing.publish(session, sequence, "kit@example.org", day_seconds=DAY)
                return done, tries, had
        except publishing.PublishBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_publishing_mid_run_moves_people_forward_and_sends_nothing_twice(
    live: tuple[Flask, WorkerProcess], smtp_sink: SmtpSink, report_line: Callable[[str], None]
) -> None:
    _, worker = live
    with db.session() as session:
        keys = [step.key for step in session.scalars(select(Sequence)).one().steps]
    before = seat_everyone(keys)
    people = list(before)
    with db.transaction() as session:
        for i in range(WAVE):
            request = subscriptions.SignupRequest(email=f"late{i}@example.org", first_name=None)
            subscriptions.signup(session, request, clock.now())
    with db.session() as session:
        pending = list(session.scalars(select(Subscriber.id).where(Subscriber.email.like("late%"))))
    time.sleep(DAY / 4)  # the first waiting parts are going out

    # Publish A: a new step after step 2. Who has not passed step 2 yet will get it anyway.
    new_key: list[str] = []

    def add_after_two(session: Session, draft: SequenceVersion) -> None:
        key = drafts.add_step(session, draft, keys[1])
        drafts.update_step(
            session,
            draft,
            key,
            subject="The new part",
            body_md="A part written **while the course runs**.",
            day_offset=2,
        )
        new_key.append(key)

    version_a, tries_a, had_then = publish_when_free(add_after_two)
    # Not past step 2 when it was published (the same transaction read it): the new step is
    # ahead of them. A part 2 recorded between that read and the publish's lock makes its
    # person one the publish moves to the new step, which the events show.
    behind_before = {s for s in people if not had_then.get(s, set()) - {keys[0]}}
    assert version_a.summary is not None
    with db.session() as session:
        moved_to_new = {
            event.subscriber_id
            for event in session.scalars(select(Event).where(Event.kind == "moved"))
            if event.data["to"] == "step 3"
        }
    assert version_a.summary["added"] == {"3": len(moved_to_new)}
    time.sleep(DAY)

    # Publish B: the old step 3 removed.
    version_b, tries_b, _ = publish_when_free(
        lambda session, draft: drafts.remove_step(session, draft, keys[2])
    )
    removed_at_message = len(smtp_sink.messages)
    assert version_b.number == version_a.number + 1
    assert version_b.summary is not None
    for version, tries in ((version_a, tries_a), (version_b, tries_b)):
        assert version.summary is not None
        report_line(
            f"live publish {version.number} (try {tries}): "
            + "; ".join(version.summary["sentences"])
        )

    # The late ones confirm now: they start on version B.
    with db.transaction() as session:
        for subscriber_id in pending:
            subscriber = session.get(Subscriber, subscriber_id)
            assert subscriber is not None
            subscriptions.confirm(session, subscriber.id, subscriber.email, clock.now(), DAY)
    everyone = people + pending

    def all_done(_: object) -> bool:
        with db.session() as session:
            statuses = session.scalars(select(Enrollment.status)).all()
        return all(status is EnrollmentStatus.COMPLETED for status in statuses)

    smtp_sink.wait_for(all_done, timeout=120)
    time.sleep(DAY + 4 * TICK)  # a later tick must send nothing more

    with db.session() as session:
        step_of = {
            message_id: (subscriber_id, key)
            for message_id, subscriber_id, key in session.execute(
                select(Delivery.message_id, Delivery.subscriber_id, Step.key)
                .join(Step, Step.id == Delivery.step_id)
                .where(Delivery.message_id.is_not(None))
            )
        }
        enrollment_versions = dict(
            session.execute(select(Enrollment.subscriber_id, Enrollment.version)).tuples().all()
        )
    order = [keys[0], keys[1], new_key[0], keys[2], keys[3]]
    got: dict[int, list[str]] = {s: list(before.get(s, [])) for s in everyone}
    for index, message in enumerate(smtp_sink.messages):
        found = step_of.get(str(message["Message-ID"]))
        if found is None:
            continue  # a confirmation mail
        subscriber_id, key = found
        got[subscriber_id].append(key)
        assert not (key == keys[2] and index >= removed_at_message), "a removed step was sent"
    for subscriber_id, keys_got in got.items():
        ranks = [order.index(key) for key in keys_got]
        assert ranks == sorted(set(ranks)), f"{subscriber_id} got {keys_got}: twice or backwards"
        assert keys_got[-1] == keys[3], f"{subscriber_id} did not get the last step"
    new_reached = {s for s, keys_got in got.items() if new_key[0] in keys_got}
    assert new_reached == moved_to_new | behind_before | set(pending)
    assert {enrollment_versions[s] for s in pending} == {version_b.number}
    with db.session() as session:
        assert not session.scalars(
            select(Delivery).where(Delivery.state.in_([DeliveryState.FAILED]))
        ).all()
    assert "Traceback" not in worker.log()
    assert isinstance(version_a.published_at, datetime)
