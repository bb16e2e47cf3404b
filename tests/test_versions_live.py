"""Publishing while the worker sends: PostgreSQL, Redis, a real Celery worker and beat, SMTP.

People start in waves, so that when the edits are published someone is at every place of the
sequence: not confirmed yet, part 1 due, waiting on each later step, being sent, finished.
Two publishes land mid-run (retried while mails of the sequence are being sent): a new step
after step 2, then the old step 3 removed. From what the SMTP sink received, each person got
every step at most once and in order, nothing of the removed step after its removal, and the
new step reached exactly those the dry run moved to it plus those who had not passed it yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.content import versions
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
from tests.helpers.sending import active_subscriber
from tests.helpers.smtp import SmtpSink
from tests.helpers.workers import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

DAY = 4.0  # seconds in a drip day: parts of one person are at least DAY / 2 apart
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


def wave(number: int) -> list[int]:
    return [active_subscriber(f"w{number}p{i}@example.org", name=None) for i in range(WAVE)]


def publish_when_free(edit: Callable[..., object]) -> SequenceVersion:
    """Draft an edit and publish it, again and again while mails are being sent (bounded)."""
    with db.transaction() as session:
        edit(session, versions.draft_of(session, session.scalars(select(Sequence)).one()))
    deadline = time.monotonic() + 60
    while True:
        try:
            with db.transaction() as session:
                sequence = session.scalars(select(Sequence)).one()
                return versions.publish(session, sequence, "kit@example.org", day_seconds=DAY)
        except versions.PublishBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def had_steps(subscriber_ids: list[int]) -> dict[int, set[str]]:
    """The step keys each subscriber has a sent, failed, skipped or claimed delivery of."""
    had: dict[int, set[str]] = {s: set() for s in subscriber_ids}
    with db.session() as session:
        rows = session.execute(
            select(Delivery.subscriber_id, Step.key)
            .join(Step, Step.id == Delivery.step_id)
            .where(Delivery.state.in_(versions.HAD_STATES))
        )
        for subscriber_id, key in rows:
            had.setdefault(subscriber_id, set()).add(key)
    return had


def test_publishing_mid_run_moves_people_forward_and_sends_nothing_twice(
    live: tuple[Flask, WorkerProcess], smtp_sink: SmtpSink, report_line: Callable[[str], None]
) -> None:
    _, worker = live
    with db.session() as session:
        keys = [step.key for step in session.scalars(select(Sequence)).one().steps]
    people = wave(0)
    time.sleep(DAY)
    people += wave(1)
    time.sleep(DAY)
    people += wave(2)
    pending: list[int] = []
    with db.transaction() as session:
        for i in range(WAVE):
            request = subscriptions.SignupRequest(email=f"late{i}@example.org", first_name=None)
            subscriptions.signup(session, request, clock.now())
    with db.session() as session:
        pending = list(session.scalars(select(Subscriber.id).where(Subscriber.email.like("late%"))))
    time.sleep(DAY / 2)

    # Publish A: a new step after step 2. Who has not passed step 2 yet will get it anyway.
    new_key: list[str] = []

    def add_after_two(session: object, draft: SequenceVersion) -> None:
        key = versions.add_step(session, draft, keys[1])  # type: ignore[arg-type]
        versions.update_step(
            session,  # type: ignore[arg-type]
            draft,
            key,
            subject="The new part",
            body_md="A part written **while the course runs**.",
            day_offset=2,
        )
        new_key.append(key)

    behind_before = {s for s, had in had_steps(people).items() if not had - {keys[0]}}
    version_a = publish_when_free(add_after_two)
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
    version_b = publish_when_free(
        lambda session, draft: versions.remove_step(session, draft, keys[2])
    )
    removed_at_message = len(smtp_sink.messages)
    assert version_b.number == version_a.number + 1
    assert version_b.summary is not None
    for version in (version_a, version_b):
        assert version.summary is not None
        report_line(f"live publish {version.number}: " + "; ".join(version.summary["sentences"]))

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
    got: dict[int, list[str]] = {s: [] for s in everyone}
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
        assert keys_got, f"{subscriber_id} got nothing"
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
