"""The delivery engine's rules: send windows, catch-up, retries, uncertain sends, brake, rate."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter import clock
from newsletter.db import db
from newsletter.delivery import claims, sending
from newsletter.delivery.flow import PREFIX as FLOW_PREFIX
from newsletter.delivery.flow import FlowControl, MemoryStore, RedisStore
from newsletter.mail.transport import SmtpTransport
from newsletter.models import Delivery, DeliveryKind, DeliveryState, Event, Sequence, Subscriber
from tests.helpers.apps import runtime_of
from tests.helpers.sending import active_subscriber, claim_all, deliver, delivery
from tests.helpers.smtp import SmtpSink


def scheduled_step(app: Flask, email: str, tz: str, day_offset: int = 1) -> int:
    """An active subscriber in `tz` with a claimed step of `day_offset` due now."""
    active_subscriber(email)
    now = clock.now()
    with db.transaction() as session:
        sub = session.scalars(select(Subscriber).where(Subscriber.email == email)).one()
        sub.time_zone = tz
        row = session.scalars(
            select(Delivery).where(
                Delivery.subscriber_id == sub.id, Delivery.kind == DeliveryKind.STEP
            )
        ).one()
        step = next(s for s in row.enrollment.sequence.steps if s.day_offset == day_offset)  # type: ignore[union-attr]
        row.step_id = step.id
        row.due_at = row.first_due_at = now
        row.state = DeliveryState.CLAIMED
        row.claimed_at = now
        return row.id


def test_step_outside_window_waits_for_its_opening(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    # 23:00 in Berlin (21:00 UTC, June): the 09:00-21:00 window is closed.
    at_time(datetime(2026, 6, 10, 21, 0, tzinfo=UTC))
    delivery_id = scheduled_step(app, "night@example.org", "Europe/Berlin")
    assert deliver(app, delivery_id) is sending.Outcome.RESCHEDULED
    row = delivery(delivery_id)
    assert row.state is DeliveryState.SCHEDULED
    assert row.due_at == datetime(2026, 6, 11, 7, 0, tzinfo=UTC)  # 09:00 Berlin next morning
    assert smtp_sink.messages == []


def test_part_one_ignores_the_window(app: Flask, smtp_sink: SmtpSink, at_time: Any) -> None:
    at_time(datetime(2026, 6, 10, 1, 0, tzinfo=UTC))  # 03:00 in Berlin
    delivery_id = scheduled_step(app, "early@example.org", "Europe/Berlin", day_offset=0)
    assert deliver(app, delivery_id) is sending.Outcome.SENT


def test_catch_up_within_grace_sends_now(app: Flask, smtp_sink: SmtpSink, at_time: Any) -> None:
    at_time(datetime(2026, 6, 10, 10, 0, tzinfo=UTC))  # 12:00 Berlin, inside the window
    delivery_id = scheduled_step(app, "late@example.org", "Europe/Berlin")
    with db.transaction() as session:
        session.get(Delivery, delivery_id).due_at = clock.now() - timedelta(hours=3)  # type: ignore[union-attr]
    assert deliver(app, delivery_id) is sending.Outcome.SENT


def test_catch_up_beyond_grace_moves_to_next_window(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(datetime(2026, 6, 10, 10, 0, tzinfo=UTC))
    delivery_id = scheduled_step(app, "later@example.org", "Europe/Berlin")
    with db.transaction() as session:
        # Due three days ago: the clock jumped, or the service was down.
        session.get(Delivery, delivery_id).due_at = clock.now() - timedelta(days=3)  # type: ignore[union-attr]
    assert deliver(app, delivery_id) is sending.Outcome.RESCHEDULED
    assert delivery(delivery_id).due_at == datetime(2026, 6, 11, 7, 0, tzinfo=UTC)
    assert smtp_sink.messages == []


def test_weekday_window_skips_the_weekend(app: Flask, smtp_sink: SmtpSink, at_time: Any) -> None:
    with db.transaction() as session:
        session.scalars(select(Sequence)).one().send_days = "12345"
    at_time(datetime(2026, 6, 13, 10, 0, tzinfo=UTC))  # Saturday noon in Berlin
    delivery_id = scheduled_step(app, "weekday@example.org", "Europe/Berlin")
    assert deliver(app, delivery_id) is sending.Outcome.RESCHEDULED
    assert delivery(delivery_id).due_at == datetime(2026, 6, 15, 7, 0, tzinfo=UTC)  # Monday 09:00


def test_give_up_after_the_configured_age(app: Flask, smtp_sink: SmtpSink) -> None:
    active_subscriber("never@example.org")
    smtp_sink.handler.refuse["never@example.org"] = "451 4.3.0 Try later"
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    with db.transaction() as session:
        session.get(Delivery, step_id).first_due_at = clock.now() - timedelta(days=4)  # type: ignore[union-attr]
    assert deliver(app, step_id) is sending.Outcome.FAILED
    assert "451" in (delivery(step_id).last_error or "")


def test_no_reply_after_data_is_uncertain_and_retried_with_same_message_id(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    active_subscriber("slow@example.org")
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    rt = runtime_of(app)
    from dataclasses import replace

    hang = asyncio.Event()

    async def never_answer(server: Any, session: Any, envelope: Any) -> str:
        await asyncio.wait_for(hang.wait(), timeout=5)
        return "250 OK"

    original = smtp_sink.handler.handle_DATA
    smtp_sink.handler.handle_DATA = never_answer  # type: ignore[method-assign]
    quick = SmtpTransport(replace(rt.settings, smtp_timeout=1.0))
    assert deliver(app, step_id, quick) is sending.Outcome.RETRY
    first = delivery(step_id)
    assert first.state is DeliveryState.RETRY and "may have accepted" in (first.last_error or "")
    with db.session() as session:
        kinds = session.scalars(select(Event.kind).where(Event.delivery_id == step_id)).all()
    assert "uncertain" in kinds
    # The retry carries the same Message-ID, so a receiver that got the first copy can drop it.
    smtp_sink.handler.handle_DATA = original  # type: ignore[method-assign]
    with db.transaction() as session:
        session.get(Delivery, step_id).due_at = clock.now()  # type: ignore[union-attr]
    assert claim_all() == [step_id]
    assert deliver(app, step_id) is sending.Outcome.SENT
    assert str(smtp_sink.messages[-1]["Message-ID"]) == first.message_id


def test_reaper_counts_claims_that_had_begun_sending(app: Flask) -> None:
    active_subscriber("crash@example.org")
    ids = claim_all()
    step_id = next(i for i in ids if delivery(i).kind is DeliveryKind.STEP)
    with db.transaction() as session:
        row = session.get(Delivery, step_id)
        assert row is not None
        row.attempted_at = clock.now()  # the worker got as far as the SMTP conversation
    with db.transaction() as session:
        assert claims.reap_stale(session, clock.now() + timedelta(hours=1), 600) == len(ids)
    with db.session() as session:
        uncertain = session.scalars(
            select(Event.delivery_id).where(Event.kind == "uncertain")
        ).all()
    assert uncertain == [step_id]


def test_dropped_connection_is_reopened_without_a_failure(app: Flask, smtp_sink: SmtpSink) -> None:
    rt = runtime_of(app)
    transport = SmtpTransport(rt.settings)
    active_subscriber("a1@example.org")
    active_subscriber("a2@example.org")
    steps = [i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP]
    assert deliver(app, steps[0], transport) is sending.Outcome.SENT
    # The server drops the idle connection (as servers do after a timeout).
    assert transport._conn is not None
    transport._conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    assert deliver(app, steps[1], transport) is sending.Outcome.SENT
    assert (transport.connects, len(smtp_sink.messages), transport.sent) == (2, 2, 2)


@pytest.mark.parametrize("group_size", [1, 3])
def test_batch_stops_and_releases_when_the_brake_trips(
    app: Flask, smtp_sink: SmtpSink, group_size: int
) -> None:
    """The brake trips after two mails: the rest go back unsent, inside a group or not."""
    for n in range(4):
        active_subscriber(f"b{n}@example.org")
    steps = [i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP]
    rt = runtime_of(app)
    sent: list[sending.Outcome] = []
    outcomes = sending.deliver_batch(
        db.engine,
        rt.composer,
        SmtpTransport(rt.settings),
        steps,
        clock.now,
        rt.policy,
        group_size=group_size,
        hooks=sending.Hooks(
            should_stop=lambda: len(sent) >= 2, on_outcome=lambda o, _: sent.append(o)
        ),
    )
    assert outcomes == {sending.Outcome.SENT: 2, sending.Outcome.HELD: 2}
    assert len(smtp_sink.messages) == 2
    assert [delivery(i).state for i in steps[:2]] == [DeliveryState.SENT] * 2
    for row in (delivery(i) for i in steps[2:]):
        # Back in the queue as if never tried: no attempt counted, nothing for the reaper.
        assert row.state is DeliveryState.SCHEDULED
        assert row.attempts == 0 and row.attempted_at is None and row.claimed_at is None


class FakeWall:
    """A settable wall clock for the brake (the store compares against it)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("store_kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_error_brake_trips_pauses_and_releases(
    store_kind: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    if store_kind == "redis":
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        store: Any = RedisStore(client)
    else:
        store = MemoryStore()
    wall = FakeWall()
    flow = FlowControl(store, rate_per_second=0, brake_after=3, max_pause=600, wall=wall)
    caplog.set_level(logging.WARNING)
    flow.record(sending.Outcome.RETRY)
    flow.record(sending.Outcome.SENT)  # a success in between resets the count
    flow.record(sending.Outcome.RETRY)
    flow.record(sending.Outcome.RETRY)
    assert not flow.paused()
    flow.record(sending.Outcome.RETRY)
    assert flow.paused()
    assert "error brake: 3 consecutive transport failures; pausing for 30 s" in caplog.text
    wall.now += 31
    assert not flow.paused()  # resumes by itself
    flow.record(sending.Outcome.SENT)
    assert "error brake released" in caplog.text
    # A second trip right after pauses longer (backoff), capped at max_pause.
    for _ in range(3):
        flow.record(sending.Outcome.RETRY)
    assert store.paused_until() == pytest.approx(wall.now + 30)


@pytest.mark.redis
@pytest.mark.timing
def test_rate_limit_reserves_evenly_spaced_slots(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client)
    waits: list[int] = []
    next_free: list[int] = []
    for _ in range(10):  # 10 messages/s
        waits.append(store.reserve(100_000))
        next_free.append(int(client.get(FLOW_PREFIX + "slot") or 0))
    # Back-to-back reservations get slots exactly 100 ms apart, whatever time passes between
    # the calls (a loaded machine), and each caller waits for its own slot: no burst.
    assert [b - a for a, b in zip(next_free, next_free[1:], strict=False)] == [100_000] * 9
    assert waits[0] <= 0 + 100_000
    for n in range(1, 10):
        assert waits[n - 1] < waits[n] <= n * 100_000, (n, waits)


def test_clock_offset_file_moves_every_process(tmp_path: Path) -> None:
    offset_file = tmp_path / "offset"
    c = clock.Clock()
    c.use_offset_file(offset_file)
    before = c.now()
    offset_file.write_text(str(3 * 86400))
    jumped = c.now()
    assert timedelta(days=3) <= jumped - before < timedelta(days=3, minutes=1)


def test_status_command_shows_states_failures_and_uncertain(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    active_subscriber("ok@example.org")
    active_subscriber("bad@example.org")
    smtp_sink.handler.refuse["bad@example.org"] = "550 5.1.1 No such user"
    for step_id in [i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP]:
        deliver(app, step_id)
    with db.transaction() as session:
        session.add(Event(kind="uncertain", data={}))
    result = app.test_cli_runner().invoke(args=["status"])
    assert result.exit_code == 0, result.output
    assert "failed: 1" in result.output and "sent: 1" in result.output
    assert "bad@example.org failed after 1 attempts: recipient bad@example.org refused: 550" in (
        result.output
    )
    assert "uncertain sends (may have been delivered twice): 1" in result.output


def test_task_of_a_reaped_claim_cannot_send_the_reclaimed_rows(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    # A tick's batch waited in the queue longer than the claim timeout; the reaper returned its
    # rows and a later tick claimed them again and queued a second task for them.
    active_subscriber("twice@example.org")
    first_claim = clock.now()
    with db.transaction() as session:
        ids = claims.claim_due(session, first_claim, 100)
    later = first_claim + timedelta(minutes=11)
    with db.transaction() as session:
        assert claims.reap_stale(session, later, 600) == len(ids)
        assert sorted(claims.claim_due(session, later, 100)) == sorted(ids)
    rt = runtime_of(app)
    transport = SmtpTransport(rt.settings)
    stale = sending.deliver_batch(
        db.engine, rt.composer, transport, ids, clock.now, rt.policy, claim=first_claim
    )
    assert stale == {sending.Outcome.NOT_CLAIMED: len(ids)}
    assert smtp_sink.messages == []
    current = sending.deliver_batch(
        db.engine, rt.composer, transport, ids, clock.now, rt.policy, claim=later
    )
    assert current[sending.Outcome.SENT] == 1  # part 1; the confirmation mail is skipped
    assert len(smtp_sink.messages) == 1


def test_nothing_is_sent_on_an_expired_claim(app: Flask, smtp_sink: SmtpSink) -> None:
    """A batch that waited in the queue past its claim's expiry hands its rows back unsent."""
    for n in range(3):
        active_subscriber(f"late{n}@example.org")
    claim = clock.now()
    with db.transaction() as session:
        claimed = claims.claim_due(session, claim, 100)
    steps = [i for i in claimed if delivery(i).kind is DeliveryKind.STEP]
    rt = runtime_of(app)
    outcomes = sending.deliver_batch(
        db.engine,
        rt.composer,
        SmtpTransport(rt.settings),
        steps,
        clock.now,
        rt.policy,
        claim=claim,
        claim_expires=claim - timedelta(seconds=1),
        group_size=2,
    )
    assert len(steps) == 3 and sending.Outcome.SENT not in outcomes
    assert smtp_sink.messages == []
    for row in (delivery(i) for i in steps):
        assert row.state is DeliveryState.SCHEDULED
        assert row.attempts == 0 and row.claimed_at is None
