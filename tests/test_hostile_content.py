"""Hostile admin text that slipped past import never stops a worker or its batch.

Import refuses these texts (`test_sandbox_bounds.py`); here each is written straight into a
step, as an old version or a hand edit of the database could leave it, and a real worker with
beat sends a batch holding those parts and innocent ones. Each hostile part fails alone with
its reason; the worker stays up, under its memory budget, and everyone else's series goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import Delivery, DeliveryKind, DeliveryState, Sequence, Step, Subscriber
from tests.helpers.apps import base_env, make_app
from tests.helpers.mailparse import part_number
from tests.helpers.smtp import SmtpSink
from tests.helpers.workers import WorkerProcess

pytestmark = pytest.mark.slow

HOSTILE = {
    "center": "{{ first_name|center(999999999) }}",
    "replace": "{{ (first_name ~ 'x')|replace('', 'x' * 40000) }}",
    "format": "{{ '%999999999s'|format(first_name) }}",
    "percent": "{{ '%0999999999d' % 1 }}",
    "divide": "{{ 10 / (first_name|length) }}",
    "nesting": "{{ " + "(" * 10_000 + "first_name" + ")" * 10_000 + " }}",
    "attribute": "{{ first_name.__class__.__mro__ }}",
}


def test_hostile_parts_fail_alone_and_the_worker_lives(
    tmp_path: Path,
    sqlite_url: str,
    smtp_sink: SmtpSink,
    run_worker: Callable[..., WorkerProcess],
) -> None:
    env = base_env(
        tmp_path,
        sqlite_url,
        smtp_sink,
        DRIP_DAY_SECONDS="2",
        DISPATCH_INTERVAL_SECONDS="0.5",
        WORKER_MEMORY_LIMIT_MB="512",
    )
    make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
        seed = session.scalars(select(Sequence)).one()
        for name, body in HOSTILE.items():
            hostile = Sequence(slug=f"hostile-{name}", title=f"Hostile {name}")
            hostile.steps = [
                Step(
                    position=1,
                    day_offset=0,
                    subject=f"Hostile {name}",
                    preheader="",
                    body_md=body,
                    resources=[],
                )
            ]
            session.add(hostile)
        seed_slug = seed.slug
    # One reader of each hostile sequence, and innocent readers of the shipped one, all due now.
    people = {f"{name}@example.org": f"hostile-{name}" for name in HOSTILE}
    people |= {f"good{n}@example.org": seed_slug for n in range(3)}
    now = clock.now()
    for email, slug in people.items():
        with db.transaction() as session:
            subscriptions.signup(
                session,
                subscriptions.SignupRequest(email=email, first_name="", sequence_slug=slug),
                now,
            )
        with db.transaction() as session:
            sub = session.scalars(select(Subscriber).where(Subscriber.email == email)).one()
            subscriptions.confirm(session, sub.id, sub.email, now, 2.0)
    worker = run_worker(env, concurrency=1)  # one pool process: every part in its batches

    good = [e for e in people if e.startswith("good")]
    smtp_sink.wait_for(
        lambda msgs: all(
            any(str(m["To"]) == e and part_number(m)[0] == 2 for m in msgs) for e in good
        ),
        timeout=60,
    )
    assert worker.proc.poll() is None, worker.log()[-3000:]
    with db.session() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery.state, Delivery.last_error)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.kind == DeliveryKind.STEP)
        ).all()
    for name in HOSTILE:
        [(state, error)] = [(r.state, r.last_error) for r in rows if r.email.startswith(name)]
        assert state is DeliveryState.FAILED, (name, state, error)
        assert "cannot build the message" in (error or ""), (name, error)
    # Nothing hostile reached the relay; the worker's log shows no crash.
    assert not [m for m in smtp_sink.messages if str(m["Subject"]).startswith("Hostile")]
    log = worker.log()
    assert "MemoryError" not in log and "WorkerLostError" not in log, log[-3000:]
    time.sleep(0.5)
    assert worker.proc.poll() is None
