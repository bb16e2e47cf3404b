"""The dashboard's figures and the funnel, counted from rows whose numbers are known.

Each test writes subscribers, enrollments, deliveries and events with chosen states and
times straight into the database, so every expected count is written down beside its rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.audience import figures
from newsletter.content.results import PERIODS, sequence_results, since_of
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.delivery import dispatch, heartbeat
from newsletter.delivery.status import health
from newsletter.models import (
    CachedFigures,
    EnrollmentStatus,
    Event,
    Heartbeat,
    Sequence,
)
from tests.helpers.apps import base_env, make_app
from tests.helpers.rows import NOW, D, S, add_delivery, add_subscriber, build_cohorts
from tests.helpers.smtp import SmtpSink


@pytest.fixture
def session(app: Flask) -> Iterator[Session]:
    with db.transaction() as session:
        yield session


# -- the dashboard -------------------------------------------------------------------------------


def test_subscribers_by_state_and_per_day_counts_in_utc_days(session: Session) -> None:
    today = datetime(2026, 11, 20, tzinfo=UTC)
    first_day = today - timedelta(days=29)
    # Signups: two today, one on the first day of the window, one the day before it (out).
    a = add_subscriber(session, "a@x.test", created=today + timedelta(hours=1), confirmed=NOW)
    add_subscriber(session, "b@x.test", S.PENDING, created=today + timedelta(minutes=1))
    add_subscriber(session, "c@x.test", S.UNSUBSCRIBED, created=first_day, confirmed=first_day)
    add_subscriber(
        session, "d@x.test", S.BOUNCED, created=first_day - timedelta(seconds=1),
        confirmed=first_day - timedelta(seconds=1),
    )  # fmt: skip
    # One second before midnight UTC belongs to the day before, whatever the server's zone.
    late = add_subscriber(
        session, "e@x.test", S.COMPLAINED, created=today - timedelta(seconds=1),
        confirmed=today - timedelta(seconds=1),
    )  # fmt: skip
    add_delivery(session, a, D.SENT, sent=today + timedelta(hours=2))
    add_delivery(session, a, D.SENT, sent=today + timedelta(hours=3))
    add_delivery(session, late, D.SENT, sent=first_day - timedelta(minutes=1))  # out
    add_delivery(session, late, D.SENT, sent=today - timedelta(days=3))
    if session.get_bind().dialect.name == "postgresql":
        # A connection in another zone must not move a row to another day.
        session.execute(text("SET LOCAL TIME ZONE 'America/New_York'"))

    counted = figures.count_dashboard(session, NOW)

    assert counted.by_state == {
        S.PENDING: 1, S.ACTIVE: 1, S.UNSUBSCRIBED: 1, S.BOUNCED: 1, S.COMPLAINED: 1
    }  # fmt: skip
    assert counted.subscribers == 5
    assert len(counted.days) == figures.DAYS
    assert counted.days[0].day == date(2026, 10, 22) and counted.days[-1].day == date(2026, 11, 20)
    by_day = {d.day: (d.signups, d.confirmations, d.sent) for d in counted.days}
    assert by_day[date(2026, 11, 20)] == (2, 1, 2)
    assert by_day[date(2026, 11, 19)] == (1, 1, 0)
    assert by_day[date(2026, 11, 17)] == (0, 0, 1)
    assert by_day[date(2026, 10, 22)] == (1, 1, 0)
    assert sum(d.signups for d in counted.days) == 4
    assert sum(d.sent for d in counted.days) == 3


def test_engine_health_counts_due_claimed_retrying_failed_and_uncertain(
    session: Session,
) -> None:
    who = add_subscriber(session, "h@x.test")
    add_delivery(session, who, D.SCHEDULED, due=NOW - timedelta(hours=2))  # due
    add_delivery(session, who, D.RETRY, due=NOW - timedelta(minutes=1))  # due, retrying
    add_delivery(session, who, D.RETRY, due=NOW + timedelta(minutes=5))  # retrying, not due
    add_delivery(session, who, D.SCHEDULED, due=NOW + timedelta(days=1))  # not due
    add_delivery(session, who, D.CLAIMED, due=NOW - timedelta(minutes=3))
    add_delivery(session, who, D.FAILED)
    add_delivery(session, who, D.FAILED)
    add_delivery(session, who, D.SENT, sent=NOW)
    add_delivery(session, who, D.SKIPPED)
    add_delivery(session, who, D.HELD, due=NOW - timedelta(hours=1))  # held, not due
    session.add_all(
        [
            Event(subscriber_id=who.id, kind="uncertain", created_at=NOW),
            Event(subscriber_id=who.id, kind="sent", created_at=NOW),
        ]
    )
    session.flush()

    current = health(session, NOW)

    assert (current.due_now, current.claimed, current.retrying, current.failed) == (2, 1, 2, 2)
    assert current.oldest_due == NOW - timedelta(hours=2)
    assert current.uncertain == 1
    assert current.held == 1


# -- the cache and its staleness rule -------------------------------------------------------------


def test_the_staleness_rule() -> None:
    age = figures.MAX_AGE
    assert figures.is_fresh(NOW, NOW, age)
    assert figures.is_fresh(NOW - age + timedelta(microseconds=1), NOW, age)
    assert not figures.is_fresh(NOW - age, NOW, age)
    # Counted "after now": the clock went back; the moment cannot be trusted.
    assert not figures.is_fresh(NOW + timedelta(seconds=1), NOW, age)


def test_fresh_figures_are_served_from_the_cache_and_stale_ones_are_recounted(
    app: Flask,
) -> None:
    with db.transaction() as session:
        add_subscriber(session, "one@x.test")
        first = figures.dashboard(session, NOW)
    assert first.value.subscribers == 1 and first.computed_at == NOW

    with db.transaction() as session:
        add_subscriber(session, "two@x.test")
        # Within the maximum age the stored figures are served: the new row is not counted.
        still = figures.dashboard(session, NOW + figures.MAX_AGE - timedelta(seconds=1))
    assert still.value == first.value and still.computed_at == NOW
    assert still.age(NOW + timedelta(seconds=20)) == timedelta(seconds=20)

    later = NOW + figures.MAX_AGE
    with db.transaction() as session:
        recounted = figures.dashboard(session, later)
    assert recounted.value.subscribers == 2 and recounted.computed_at == later
    with db.session() as session:
        # One row per set of figures, overwritten, and what it holds reads back the same.
        assert session.scalar(select(func.count()).select_from(CachedFigures)) == 1
        assert figures.dashboard(session, later).value == recounted.value


def test_the_beats_refresh_counts_even_fresh_figures(app: Flask) -> None:
    with db.transaction() as session:
        figures.dashboard(session, NOW)
        add_subscriber(session, "late@x.test")
    with db.transaction() as session:
        refreshed = figures.refresh_dashboard(session, NOW + timedelta(seconds=1))
    assert refreshed.value.subscribers == 1


# -- the heartbeat -------------------------------------------------------------------------------


def test_each_dispatch_tick_leaves_its_heartbeat(app: Flask) -> None:
    with db.session() as session:
        assert heartbeat.last(session, heartbeat.DISPATCH) is None
    queued: list[list[int]] = []
    for tick in (NOW, NOW + timedelta(seconds=5)):
        dispatch.dispatch(
            db.session,
            tick,
            dispatch_batch_size=10,
            send_batch_size=10,
            claim_timeout_seconds=60,
            enqueue=lambda ids, _claim: queued.append(ids),
        )
    with db.session() as session:
        assert heartbeat.last(session, heartbeat.DISPATCH) == NOW + timedelta(seconds=5)
        assert session.scalar(select(func.count()).select_from(Heartbeat)) == 1


# -- the funnel ----------------------------------------------------------------------------------


def rows_of(session: Session, sequence: Sequence, period: str) -> list[tuple[object, ...]]:
    results = sequence_results(session, sequence, since_of(period, NOW))
    return [
        (p.position, p.sent, p.to_go, p.failed, p.skipped, p.left[S.UNSUBSCRIBED],
         p.left[S.BOUNCED], p.left[S.COMPLAINED], p.drop_off)
        for p in results.parts
    ]  # fmt: skip


def test_the_funnel_counts_the_cohort_of_the_chosen_period(session: Session) -> None:
    sequence = build_cohorts(session)
    # part, sent, to go, failed, skipped, left: unsubscribed, bounced, complained; drop-off
    last_week = [
        (1, 2, 0, 0, 0, 1, 0, 0, None),  # Ann and Bob; Bob left after part 1
        (2, 1, 0, 0, 1, 0, 0, 0, 0.5),  # Ann; Bob's was skipped
        (3, 0, 1, 0, 0, 0, 0, 0, 1.0),  # Ann's is to go
        (4, 0, 0, 0, 0, 0, 0, 0, None),
    ]
    assert rows_of(session, sequence, "7") == last_week
    assert rows_of(session, sequence, "30") == last_week
    assert rows_of(session, sequence, "90") == [
        (1, 4, 0, 0, 0, 1, 1, 0, None),  # + Cid and Dee; Dee bounced after part 1
        (2, 2, 0, 1, 1, 0, 0, 0, 0.5),  # + Cid; Dee's failed
        (3, 1, 1, 0, 0, 0, 0, 0, 0.5),
        (4, 1, 0, 0, 0, 0, 0, 0, 0.0),
    ]
    everyone = rows_of(session, sequence, "all")
    assert everyone[0] == (1, 5, 0, 0, 0, 1, 1, 1, None)  # + Eve, who complained
    assert everyone[1][-1] == pytest.approx(0.6)
    readers = sequence_results(session, sequence, since_of("7", NOW)).readers
    assert readers == {EnrollmentStatus.ACTIVE: 1, EnrollmentStatus.STOPPED: 1}


def test_the_funnel_is_cached_per_sequence_and_period(app: Flask) -> None:
    with db.transaction() as session:
        sequence = build_cohorts(session)
        week = figures.funnel(session, sequence, "7", NOW)
        everyone = figures.funnel(session, sequence, "all", NOW)
    assert week.value.parts[0].sent == 2 and everyone.value.parts[0].sent == 5
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        again = figures.funnel(session, sequence, "7", NOW + timedelta(seconds=1))
    assert again == week  # read back from the cache, equal to what was counted
    assert set(PERIODS) == {"7", "30", "90", "all"}


def _tamper(key: str) -> None:
    """Write a number into a stored funnel that no count gives, to tell a recount from a read."""
    with db.transaction() as session:
        row = session.get(CachedFigures, key)
        assert row is not None
        data = dict(row.data)
        data["parts"] = [{**data["parts"][0], "sent": 999}, *data["parts"][1:]]
        row.data = data


def test_a_stale_funnel_is_served_while_a_task_counts_it_again(app: Flask) -> None:
    with db.transaction() as session:
        sequence = build_cohorts(session)
        sequence_id = sequence.id
        asked: list[str] = []

        def ask() -> bool:
            asked.append("recount")
            return True

        # Missing: counted here, whatever `recount` offers.
        first = figures.funnel(session, sequence, "all", NOW, recount=ask)
    assert asked == [] and not first.recounting and first.value.parts[0].sent == 5
    key = figures.funnel_key(sequence_id, "all")
    _tamper(key)
    later = NOW + figures.FUNNEL_MAX_AGE + timedelta(seconds=1)
    with db.transaction() as session:
        sequence = session.get(Sequence, sequence_id)
        assert sequence is not None
        stale = figures.funnel(session, sequence, "all", later, recount=ask)
    # Stale: served as stored, with its old moment, once a recount was asked for.
    assert asked == ["recount"] and stale.recounting
    assert stale.computed_at == NOW and stale.value.parts[0].sent == 999
    with db.transaction() as session:
        assert figures.recount_funnel(session, sequence_id, "all", later)
    with db.transaction() as session:
        sequence = session.get(Sequence, sequence_id)
        assert sequence is not None
        fresh = figures.funnel(session, sequence, "all", later, recount=ask)
        # Fresh now: a second recount queued by another reader does nothing.
        assert not figures.recount_funnel(session, sequence_id, "all", later)
    assert asked == ["recount"] and not fresh.recounting
    assert fresh.computed_at == later and fresh.value.parts[0].sent == 5


def test_a_recount_that_cannot_be_queued_is_counted_by_the_reader(app: Flask) -> None:
    with db.transaction() as session:
        sequence = build_cohorts(session)
        figures.funnel(session, sequence, "7", NOW)
        sequence_id = sequence.id
    _tamper(figures.funnel_key(sequence_id, "7"))
    later = NOW + figures.FUNNEL_MAX_AGE
    with db.transaction() as session:
        sequence = session.get(Sequence, sequence_id)
        assert sequence is not None
        counted = figures.funnel(session, sequence, "7", later, recount=lambda: False)
    assert not counted.recounting and counted.computed_at == later
    assert counted.value.parts[0].sent == 2


def test_a_recount_needs_a_stored_funnel_of_a_known_period(app: Flask) -> None:
    with db.transaction() as session:
        sequence = build_cohorts(session)
        figures.funnel(session, sequence, "30", NOW)
        sequence_id = sequence.id
    later = NOW + timedelta(hours=1)
    with db.transaction() as session:
        assert not figures.recount_funnel(session, sequence_id, "7", later)  # never counted
        assert not figures.recount_funnel(session, sequence_id, "1; DROP", later)
        assert not figures.recount_funnel(session, sequence_id + 1, "30", later)
        assert figures.recount_funnel(session, sequence_id, "30", later)
    with db.session() as session:
        keys = sorted(session.scalars(select(CachedFigures.key)))
    assert keys == [figures.funnel_key(sequence_id, "30")]


@pytest.mark.postgres
def test_readers_of_one_stale_funnel_start_one_count(postgres_url: str, tmp_path: Path) -> None:
    """A recount skips a funnel whose row another recount holds (PostgreSQL SKIP LOCKED)."""
    make_app(base_env(tmp_path, postgres_url, None))
    with db.transaction() as session:
        ensure_seed(session)
        sequence = build_cohorts(session)
        figures.funnel(session, sequence, "all", NOW)
        sequence_id = sequence.id
    key = figures.funnel_key(sequence_id, "all")
    later = NOW + timedelta(hours=1)
    try:
        with db.transaction() as holder:
            holder.get(CachedFigures, key, with_for_update=True)  # the first recount, counting
            with db.transaction() as session:
                assert not figures.recount_funnel(session, sequence_id, "all", later)
        with db.transaction() as session:
            assert figures.recount_funnel(session, sequence_id, "all", later)
    finally:
        db.dispose()


def test_flask_results_counts_the_cohort_of_a_period(
    app: Flask, at_time: Callable[[datetime], None]
) -> None:
    with db.transaction() as session:
        build_cohorts(session)
    at_time(NOW)

    def part_one(period: str) -> list[str]:
        output = app.test_cli_runner().invoke(args=["results", "--period", period])
        assert output.exit_code == 0, output.output
        return next(
            line.split() for line in output.output.splitlines() if line.split()[:1] == ["1"]
        )

    # part, sent, to go, failed, skipped, left after
    assert part_one("7")[:6] == ["1", "2", "0", "0", "0", "1"]
    assert part_one("all")[:6] == ["1", "5", "0", "0", "0", "3"]
    refused = app.test_cli_runner().invoke(args=["results", "--period", "365"])
    assert refused.exit_code != 0 and "'365' is not one of" in refused.output


@pytest.mark.slow
def test_a_real_worker_and_beat_leave_the_heartbeat_and_count_the_figures(
    tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink, run_worker: Callable[..., object]
) -> None:
    env = base_env(tmp_path, sqlite_url, smtp_sink, DISPATCH_INTERVAL_SECONDS="0.5")
    make_app(env)
    with db.transaction() as session:
        add_subscriber(session, "ann@x.test", created=clock.now())
    run_worker(env)

    def found() -> tuple[datetime | None, CachedFigures | None]:
        with db.session() as session:
            return heartbeat.last(session, heartbeat.DISPATCH), session.get(
                CachedFigures, "dashboard"
            )

    # The beat ticks every half second, and refreshes the figures every REFRESH_SECONDS (its
    # first run one interval after it starts); waited for with a generous bound, not timed.
    deadline = time.monotonic() + figures.REFRESH_SECONDS * 4
    tick, counted = found()
    while (tick is None or counted is None) and time.monotonic() < deadline:
        time.sleep(0.5)
        tick, counted = found()
    assert tick is not None, "no dispatch tick left its heartbeat"
    assert counted is not None, "the beat never counted the dashboard's figures"
    assert counted.data["by_state"]["active"] == 1
