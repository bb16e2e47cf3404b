"""Several worker processes and two dispatchers at once: each mail exactly once, no lock errors."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import Delivery, DeliveryKind, DeliveryState, Subscriber
from tests.helpers.apps import base_env, make_app
from tests.helpers.mailparse import text_of
from tests.helpers.smtp import SmtpSink
from tests.helpers.workers import WorkerProcess

pytestmark = pytest.mark.slow

PEOPLE = 120


@pytest.fixture(
    params=[
        "sqlite-embedded",
        pytest.param("postgres-redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
def env(request: pytest.FixtureRequest, tmp_path: Path, smtp_sink: SmtpSink) -> dict[str, str]:
    # Real days: part 1 goes at once, part 2 is a day away, so each person gets exactly one mail.
    extra = {
        "DISPATCH_INTERVAL_SECONDS": "0.3",
        "SEND_BATCH_SIZE": "5",
        "DISPATCH_BATCH_SIZE": "20",
    }
    if request.param == "sqlite-embedded":
        return base_env(tmp_path, request.getfixturevalue("sqlite_url"), smtp_sink, **extra)
    redis = request.getfixturevalue("redis_url")
    return base_env(
        tmp_path,
        request.getfixturevalue("postgres_url"),
        smtp_sink,
        BROKER_URL=redis,
        REDIS_URL=redis,
        **extra,
    )


def test_four_processes_two_dispatchers_send_each_mail_once(
    env: dict[str, str], smtp_sink: SmtpSink, run_worker: Callable[..., WorkerProcess]
) -> None:
    make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
    now = clock.now()
    for n in range(PEOPLE):
        with db.transaction() as session:
            subscriptions.signup(
                session, subscriptions.SignupRequest(email=f"p{n}@example.org"), now
            )
    with db.transaction() as session:
        for sub in session.scalars(select(Subscriber)):
            subscriptions.confirm(session, sub.id, sub.email, now, 86400)
    # Two worker processes with two pool children each, and a beat in both: two dispatchers
    # claim from the same table at the same time.
    workers = [run_worker(env, name=f"w{i}", concurrency=2, beat=True) for i in range(2)]

    smtp_sink.wait_for(lambda ms: len(ms) >= PEOPLE, timeout=120)
    # A moment for any duplicate to show up before counting.
    time.sleep(2)
    parts = [m for m in smtp_sink.messages if "Part 1 of" in text_of(m)]
    per_person = Counter(str(m["To"]) for m in parts)
    assert len(per_person) == PEOPLE and set(per_person.values()) == {1}
    with db.session() as session:
        firsts = session.scalars(
            select(Delivery).where(
                Delivery.kind == DeliveryKind.STEP, Delivery.sent_at.is_not(None)
            )
        ).all()
    assert len(firsts) == PEOPLE
    assert all(d.state is DeliveryState.SENT and d.attempts == 1 for d in firsts)
    for worker in workers:
        log = worker.log()
        assert "database is locked" not in log
        assert "Traceback" not in log
    # Both schedulers ran; which one wins each tick is up to timing (claims racing inside one
    # statement are covered by test_claims.py's concurrent claimers).
    assert all("beat: Starting" in w.log() for w in workers)
