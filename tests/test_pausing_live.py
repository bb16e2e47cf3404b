"""Pausing, resending and restarting with a real worker and beat, a real broker and a real SMTP
server, on the embedded stack (SQLite) and on PostgreSQL with Redis.

A drip day is two seconds here (`tests/helpers/stacks.py`), so a whole series plays out
in about eight: the pause lands while parts are going out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter import clock
from newsletter.audience import moves
from newsletter.content.pausing import pause_sequence, resume_sequence
from newsletter.db import db
from newsletter.models import (
    OPEN_STATES,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    Step,
    Subscriber,
)
from tests.helpers.mailparse import part_number, text_of
from tests.helpers.sending import active_subscriber
from tests.helpers.smtp import SmtpSink
from tests.helpers.stacks import DAY, STACKS, TICK, go_live, stack_env
from tests.helpers.workers import WorkerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(params=STACKS)
def worker(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    smtp_sink: SmtpSink,
    run_worker: Callable[..., WorkerProcess],
) -> WorkerProcess:
    """A running worker with beat on each stack; the test process has the app."""
    return go_live(stack_env(request, tmp_path, smtp_sink), run_worker)[1]


PARTS = 4  # the seed sequence


def parts(sink: SmtpSink, email: str) -> list[int]:
    """The part numbers that reached `email`, in arrival order."""
    return [part_number(m)[0] for m in sink.to(email) if "Part " in text_of(m)]


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll the database-side `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.1)


def count(*where: object) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count(Delivery.id)).where(*where)) or 0)  # type: ignore[arg-type]


def completed() -> int:
    with db.session() as session:
        return int(
            session.scalar(
                select(func.count(Enrollment.id)).where(
                    Enrollment.status == EnrollmentStatus.COMPLETED
                )
            )
            or 0
        )


def with_sequence(action: Callable[..., int]) -> int:
    with db.transaction() as session:
        return action(session, session.scalars(select(Sequence)).one(), clock.now())


def test_nothing_is_sent_while_paused_and_everyone_resumes_where_they_were(
    worker: WorkerProcess, smtp_sink: SmtpSink
) -> None:
    early = [f"early{i}@example.org" for i in range(3)]
    late = [f"late{i}@example.org" for i in range(3)]
    for email in early:
        active_subscriber(email)
    smtp_sink.wait_for(lambda _: all(len(parts(smtp_sink, e)) >= 2 for e in early), timeout=60)
    for email in late:
        active_subscriber(email)
    smtp_sink.wait_for(lambda _: all(parts(smtp_sink, e) for e in late), timeout=60)

    with_sequence(pause_sequence)
    # Mails a worker had already claimed finish (or wait, if not yet loaded); then nothing.
    wait_until(lambda: count(Delivery.state == DeliveryState.CLAIMED) == 0)
    at_pause = {email: parts(smtp_sink, email) for email in early + late}
    assert any(len(got) < PARTS for got in at_pause.values()), at_pause
    time.sleep(3 * DAY + 4 * TICK)  # every waiting part came due meanwhile, some twice over
    assert {email: parts(smtp_sink, email) for email in early + late} == at_pause
    unfinished = sum(len(got) < PARTS for got in at_pause.values())
    assert count(Delivery.state.in_(OPEN_STATES), Delivery.kind == DeliveryKind.STEP) == count(
        Delivery.state == DeliveryState.HELD
    )
    assert count(Delivery.state == DeliveryState.HELD) == unfinished

    with_sequence(resume_sequence)
    smtp_sink.wait_for(
        lambda _: all(len(parts(smtp_sink, e)) >= PARTS for e in early + late), timeout=90
    )
    time.sleep(2 * DAY + 4 * TICK)  # and nothing more comes
    for email in early + late:
        assert parts(smtp_sink, email) == list(range(1, PARTS + 1)), email
    with db.session() as session:
        statuses = set(session.scalars(select(Enrollment.status)))
    assert statuses == {EnrollmentStatus.COMPLETED}
    assert "Traceback" not in worker.log()


def test_resend_and_restart_go_through_the_worker(
    worker: WorkerProcess, smtp_sink: SmtpSink
) -> None:
    ann = active_subscriber("ann@example.org")
    bob = active_subscriber("bob@example.org")
    # Both have had the whole series (its last part recorded: the enrollments completed).
    wait_until(lambda: completed() == 2, timeout=90)
    with db.transaction() as session:
        subscriber = session.get(Subscriber, ann)
        step2 = session.scalars(select(Step).where(Step.position == 2)).one()
        assert subscriber is not None
        moves.resend_step(session, subscriber, step2, clock.now())
    with db.transaction() as session:
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == bob)
        ).one()
        fresh = moves.restart_enrollment(session, enrollment, clock.now(), day_seconds=DAY)
        fresh_id = fresh.id

    smtp_sink.wait_for(lambda _: len(parts(smtp_sink, "ann@example.org")) > PARTS, timeout=60)
    smtp_sink.wait_for(lambda _: len(parts(smtp_sink, "bob@example.org")) >= 2 * PARTS, timeout=90)
    time.sleep(2 * DAY + 4 * TICK)
    # The resend arrived once and moved nothing: no part was planned after it.
    assert parts(smtp_sink, "ann@example.org") == [1, 2, 3, 4, 2]
    assert count(Delivery.subscriber_id == ann, Delivery.kind == DeliveryKind.STEP) == PARTS
    # The restart sent the series again, from part 1, through the new enrollment.
    assert parts(smtp_sink, "bob@example.org") == [1, 2, 3, 4, 1, 2, 3, 4]
    with db.session() as session:
        bobs = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == bob).order_by(Enrollment.id)
        ).all()
        assert [e.status for e in bobs] == [EnrollmentStatus.COMPLETED] * 2
        assert bobs[1].id == fresh_id
        sent = session.scalars(
            select(Delivery.enrollment_id).where(
                Delivery.subscriber_id == bob, Delivery.state == DeliveryState.SENT
            )
        ).all()
    assert sorted(sent) == sorted([bobs[0].id] * PARTS + [fresh_id] * PARTS)
    assert "Traceback" not in worker.log()
