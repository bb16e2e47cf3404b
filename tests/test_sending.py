"""Sending one delivery through the real SMTP server: success, retry, bounce, skip."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import timedelta
from email import policy
from email.parser import BytesParser

import pytest
from flask import Flask
from sqlalchemy import func, select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.db import db
from newsletter.delivery import claims, sending
from newsletter.mail.compose import HeaderError, checked_header
from newsletter.mail.transport import SendError, SmtpTransport, Stage
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    Sequence,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from tests.helpers.apps import runtime_of
from tests.helpers.crowd import seat
from tests.helpers.mailparse import html_of, part_number, text_of
from tests.helpers.sending import active_subscriber, claim_all, deliver, delivery, run_batch
from tests.helpers.smtp import SmtpSink


def test_part_one_is_sent_recorded_and_part_two_scheduled(app: Flask, smtp_sink: SmtpSink) -> None:
    active_subscriber("ann@example.org")
    ids = claim_all()
    kinds = {delivery(i).kind for i in ids}
    assert kinds == {DeliveryKind.CONFIRM, DeliveryKind.STEP}
    step_id = next(i for i in ids if delivery(i).kind is DeliveryKind.STEP)
    confirm_id = next(i for i in ids if i != step_id)
    # The confirmation mail is skipped: the person confirmed before it went out.
    assert deliver(app, confirm_id) is sending.Outcome.SKIPPED
    assert deliver(app, step_id) is sending.Outcome.SENT

    row = delivery(step_id)
    assert row.state is DeliveryState.SENT and row.sent_at is not None and row.attempts == 1
    [msg] = smtp_sink.messages
    assert str(msg["Message-ID"]) == row.message_id
    assert part_number(msg) == (1, 4)
    assert str(msg["To"]) == "Ann <ann@example.org>"
    assert "Hi Ann," in text_of(msg)
    with db.session() as session:
        following = session.scalars(
            select(Delivery).where(Delivery.kind == DeliveryKind.STEP, Delivery.id != step_id)
        ).one()
    assert following.state is DeliveryState.SCHEDULED
    assert following.due_at > clock.now()  # tomorrow at the send hour, not now
    # Handing the same id in again (a redelivered task) sends nothing more.
    assert deliver(app, step_id) is sending.Outcome.NOT_CLAIMED
    assert len(smtp_sink.messages) == 1


@pytest.mark.any_database
def test_rendered_mail_structure(app: Flask, smtp_sink: SmtpSink) -> None:
    sub_id = active_subscriber("hdr@example.org", name=None)
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    deliver(app, step_id)
    [msg] = smtp_sink.messages
    raw = msg.as_bytes(policy=policy.SMTP)
    strict = BytesParser(policy=policy.strict).parsebytes(raw)
    assert strict.get_content_type() == "multipart/alternative"
    for header in (
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ):
        assert strict[header], header
    assert str(msg["Message-ID"]).endswith("@example.test>")
    assert "emotional-distance.example.test" in str(msg["List-Id"])
    token = runtime_of(app).tokens.unsubscribe_token(sub_id)
    assert str(msg["List-Unsubscribe"]) == f"<https://news.example.test/unsubscribe/{token}>"
    html = html_of(msg)
    assert '<html lang="en"' in html and 'role="presentation"' in html
    assert "Part 1 of 4" in html and 'style="' in html  # CSS inlined
    assert f"/unsubscribe/{token}" in html and "1 Test Street, Testville" in html
    assert "Hi ," not in text_of(msg)


def test_unsubscribe_while_claimed_wins(app: Flask, smtp_sink: SmtpSink) -> None:
    sub_id = active_subscriber("late@example.org")
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    with db.transaction() as session:
        subscriptions.unsubscribe(session, sub_id, clock.now(), "page")
    assert deliver(app, step_id) is sending.Outcome.NOT_CLAIMED
    assert smtp_sink.messages == []
    assert delivery(step_id).state is DeliveryState.SKIPPED


def test_transient_refusal_is_retried_later(app: Flask, smtp_sink: SmtpSink) -> None:
    active_subscriber("busy@example.org")
    smtp_sink.handler.refuse["busy@example.org"] = "451 4.3.0 Try again later"
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    assert deliver(app, step_id) is sending.Outcome.RETRY
    row = delivery(step_id)
    assert row.state is DeliveryState.RETRY and row.attempts == 1
    assert "451" in (row.last_error or "") and row.due_at > clock.now()
    # Once the server takes mail again and the retry is due, it goes out once.
    smtp_sink.handler.refuse.clear()
    with db.transaction() as session:
        session.get(Delivery, step_id).due_at = clock.now()  # type: ignore[union-attr]
    assert claim_all() == [step_id]
    assert deliver(app, step_id) is sending.Outcome.SENT
    assert delivery(step_id).attempts == 2 and len(smtp_sink.messages) == 1


def test_server_421_on_data_is_transient(app: Flask, smtp_sink: SmtpSink) -> None:
    active_subscriber("d@example.org")
    smtp_sink.handler.data_reply = "421 4.7.0 Closing connection"
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    assert deliver(app, step_id) is sending.Outcome.RETRY
    assert delivery(step_id).state is DeliveryState.RETRY


def test_hard_bounce_fails_suppresses_and_stops(app: Flask, smtp_sink: SmtpSink) -> None:
    sub_id = active_subscriber("gone@example.org")
    smtp_sink.handler.refuse["gone@example.org"] = "550 5.1.1 No such user"
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    assert deliver(app, step_id) is sending.Outcome.BOUNCED
    row = delivery(step_id)
    assert row.state is DeliveryState.FAILED and "550" in (row.last_error or "")
    with db.session() as session:
        assert session.get(Subscriber, sub_id).status is SubscriberStatus.BOUNCED  # type: ignore[union-attr]
        assert session.scalars(select(Suppression.email)).all() == ["gone@example.org"]
        steps = session.scalars(select(Delivery).where(Delivery.kind == DeliveryKind.STEP)).all()
        enrollment = session.scalars(select(Enrollment)).one()
    assert len(steps) == 1  # no next part was scheduled
    # The series ends with the bounce, in the same transaction, and says why.
    assert enrollment.status is EnrollmentStatus.STOPPED
    assert enrollment.stop_reason == "bounced"


def test_smtp_server_down_is_transient(app: Flask) -> None:
    active_subscriber("down@example.org")
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    # The app's SMTP_PORT points at the sink; build a transport aimed at a closed port.
    from dataclasses import replace

    from tests.helpers.ports import free_port

    settings = replace(runtime_of(app).settings, smtp_port=free_port())
    assert deliver(app, step_id, SmtpTransport(settings)) is sending.Outcome.RETRY
    assert "Connection refused" in (delivery(step_id).last_error or "")


@pytest.mark.parametrize("value", ["a\r\nBcc: x@example.org", "a\nb", "x" * 1000])
def test_bad_header_values_are_refused(value: str) -> None:
    with pytest.raises(HeaderError):
        checked_header("Subject", value)


def test_subject_with_line_break_never_becomes_a_header(app: Flask, smtp_sink: SmtpSink) -> None:
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        sequence.steps[0].subject = "Hello\r\nBcc: victim@example.org"
    active_subscriber("inj@example.org")
    active_subscriber("fine@example.org")
    ids = [i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP]
    rt = runtime_of(app)
    with app.app_context():
        outcomes = sending.deliver_batch(
            db.engine, rt.composer, SmtpTransport(rt.settings), ids, clock.now, rt.policy
        )
    # The bad mail fails visibly; the rest of the batch is not held up by it.
    assert outcomes == {sending.Outcome.FAILED: 2}
    for step_id in ids:
        row = delivery(step_id)
        assert row.state is DeliveryState.FAILED
        assert "line break" in (row.last_error or "")
    assert smtp_sink.messages == []


def test_one_unbuildable_mail_does_not_stop_its_batch(app: Flask, smtp_sink: SmtpSink) -> None:
    active_subscriber("ok@example.org", name="Ok")
    bad = active_subscriber("bad@example.org", name="Evil")
    with db.transaction() as session:  # as if written by an old version or by hand
        sub = session.get(Subscriber, bad)
        assert sub is not None
        sub.first_name = "Evil\r\nBcc: victim@example.org"
    ids = sorted(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    rt = runtime_of(app)
    with app.app_context():
        outcomes = sending.deliver_batch(
            db.engine, rt.composer, SmtpTransport(rt.settings), ids, clock.now, rt.policy
        )
    assert outcomes == {sending.Outcome.FAILED: 1, sending.Outcome.SENT: 1}
    assert [m["To"].addresses[0].addr_spec for m in smtp_sink.messages] == ["ok@example.org"]
    states = {delivery(i).state for i in ids}
    assert states == {DeliveryState.FAILED, DeliveryState.SENT}


@pytest.mark.any_database
def test_cached_step_is_personalised_per_subscriber(app: Flask, smtp_sink: SmtpSink) -> None:
    rt = runtime_of(app)
    active_subscriber("one@example.org", name="<b>Bo</b> & Co")
    active_subscriber("two@example.org", name=None)
    active_subscriber("three@example.org", name="Cy")
    for step_id in [i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP]:
        assert deliver(app, step_id) is sending.Outcome.SENT
    assert len(rt.composer._step_cache) == 2  # one render with a name, one without
    by_to = {str(m["To"]).split("<")[-1].rstrip(">"): m for m in smtp_sink.messages}
    one, two, three = (by_to[f"{n}@example.org"] for n in ("one", "two", "three"))
    assert "Hi &lt;b&gt;Bo&lt;/b&gt; &amp; Co," in html_of(one)
    assert "Hi <b>Bo</b> & Co," in text_of(one)
    assert re.search(r"^Hi\b", text_of(two), re.MULTILINE) is None
    assert "Hi Cy," in text_of(three)
    with db.session() as session:
        ids = {s.email: s.id for s in session.scalars(select(Subscriber))}
    for address, msg in by_to.items():
        token = rt.tokens.unsubscribe_token(ids[address])
        assert f"/unsubscribe/{token}" in html_of(msg) and f"/unsubscribe/{token}" in text_of(msg)
        prefs = f"/preferences/{rt.tokens.preferences_token(ids[address])}"
        assert prefs in html_of(msg) and prefs in text_of(msg)
        assert "NLSUBST" not in html_of(msg) + text_of(msg)


def _on_the_wire(app: Flask, email: str, began_ago: float = 0.0) -> tuple[int, int]:
    """A subscriber whose part 1 a worker has begun sending; returns (subscriber, delivery)."""
    subscriber_id = active_subscriber(email)
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    with db.transaction() as session:
        row = session.get(Delivery, step_id)
        assert row is not None
        began = clock.now() - timedelta(seconds=began_ago)
        row.claimed_at, row.attempted_at = began, began
    with db.transaction() as session:
        assert subscriptions.unsubscribe(session, subscriber_id, clock.now(), "page")
    return subscriber_id, step_id


def test_unsubscribe_waits_for_the_mail_on_the_wire(app: Flask) -> None:
    subscriber_id, step_id = _on_the_wire(app, "wire@example.org")
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # the server's reply arrives while the page waits
        polls.append(seconds)
        if len(polls) == 2:
            with db.transaction() as session:
                row = session.get(Delivery, step_id)
                assert row is not None and row.state is DeliveryState.SKIPPED
                row.state = DeliveryState.SENT

    waited = subscriptions.wait_while_mid_send(db.session, subscriber_id, clock.now, 5, sleep=sleep)
    assert waited and len(polls) == 2


def test_unsubscribe_wait_is_bounded(app: Flask) -> None:
    subscriber_id, _ = _on_the_wire(app, "hang@example.org")
    polls: list[float] = []
    assert not subscriptions.wait_while_mid_send(
        db.session, subscriber_id, clock.now, 0.2, stale_after_seconds=60, sleep=polls.append
    )
    assert polls  # it did wait, and then gave up


def test_an_attempt_older_than_the_bound_is_a_dead_worker(app: Flask) -> None:
    subscriber_id, _ = _on_the_wire(app, "dead@example.org", began_ago=60)
    polls: list[float] = []
    assert subscriptions.wait_while_mid_send(
        db.session, subscriber_id, clock.now, 5, sleep=polls.append
    )
    assert polls == []


def test_one_recorded_group_completes_several_enrollments(app: Flask) -> None:
    """Two last parts recorded in one group: both enrollments complete in one executemany (an
    IN list there once made it fail, and with it the recording of the whole group)."""
    from newsletter.delivery import planning

    now = clock.now()
    every_part = {n: DeliveryState.SENT for n in (1, 2, 3, 4)}
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        window = sequence.window
        enrollments = [
            seat(
                session,
                sequence,
                f"last{i}@example.org",
                EnrollmentStatus.ACTIVE,
                every_part,
                now=now,
                due=now,
            )
            for i in range(2)
        ]
        follows = [
            planning.FollowUp(
                enrollment_id=enrollment_id,
                subscriber_id=session.get(Enrollment, enrollment_id).subscriber_id,  # type: ignore[union-attr]
                started_at=now,
                time_zone="UTC",
                window=window,
                next_step_id=None,
                next_day_offset=0,
            )
            for enrollment_id in enrollments
        ]
    with db.engine.begin() as conn:
        planning.schedule_next(conn, [(follow, now) for follow in follows], now, 86400)
    with db.session() as session:
        for enrollment_id in enrollments:
            enrollment = session.get(Enrollment, enrollment_id)
            assert enrollment is not None and enrollment.status is EnrollmentStatus.COMPLETED


class _LateTimeout(SmtpTransport):
    """The server stores the message but its reply comes after the client gave up; `meanwhile`
    is what happens elsewhere before the timeout fires (the reaper, another worker)."""

    def __init__(self, app: Flask, meanwhile: Callable[[], None]) -> None:
        super().__init__(runtime_of(app).settings)
        self.meanwhile = meanwhile

    def send_data(self, sender: str, recipients: Iterable[str], payload: bytes) -> None:
        super().send_data(sender, recipients, payload)
        self.meanwhile()
        raise SendError(
            "no reply after the message was sent (TimeoutError); the server may have accepted it",
            stage=Stage.MESSAGE,
            ambiguous=True,
        )


def test_a_late_timeout_leaves_alone_a_part_another_attempt_sent(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    """The reaper hands a slow message on, another worker sends and records it, and only then
    does the first attempt's reply time out: the part stays sent and its next part scheduled.
    (Writing a retry over it once sent the part again with the next one already there, which
    ended the course early: the last part never went.)"""
    active_subscriber("slow@example.org")
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    first_claim = delivery(step_id).claimed_at
    second: list[sending.Outcome] = []

    def reaped_and_sent_elsewhere() -> None:
        with db.transaction() as session:
            assert claims.give_back(session, Delivery.id == step_id, clock.now(), "claim expired")
        assert claim_all() == [step_id]
        again = delivery(step_id).claimed_at
        assert again != first_claim
        second.extend(run_batch(app, [step_id], claim=again))

    outcomes = run_batch(
        app, [step_id], _LateTimeout(app, reaped_and_sent_elsewhere), claim=first_claim
    )
    assert second == [sending.Outcome.SENT]
    assert outcomes == Counter({sending.Outcome.SKIPPED: 1})
    row = delivery(step_id)
    assert row.state is DeliveryState.SENT and row.sent_at is not None
    # Two copies with one Message-ID (the counted, uncertain window), and both are on record.
    assert [part_number(m) for m in smtp_sink.messages] == [(1, 4), (1, 4)]
    assert len({str(m["Message-ID"]) for m in smtp_sink.messages}) == 1
    with db.session() as session:
        uncertain = session.scalar(
            select(func.count(Event.id)).where(
                Event.delivery_id == step_id, Event.kind == "uncertain"
            )
        )
        following = session.scalars(
            select(Delivery).where(Delivery.kind == DeliveryKind.STEP, Delivery.id != step_id)
        ).one()
        enrollment = session.scalars(select(Enrollment)).one()
    assert uncertain == 2  # the reaper's and the timed-out reply's
    assert following.state is DeliveryState.SCHEDULED
    assert enrollment.status is EnrollmentStatus.ACTIVE


def test_a_course_with_a_part_still_to_go_does_not_complete(app: Flask) -> None:
    """A part recorded as if it were the last, while a later part waits: the course goes on
    (a part sent twice may find its follow-up already scheduled)."""
    from newsletter.delivery import planning

    now = clock.now()
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        waiting = {1: DeliveryState.SENT, 2: DeliveryState.SENT, 3: DeliveryState.SCHEDULED}
        enrollment_id = seat(
            session, sequence, "mid@example.org", EnrollmentStatus.ACTIVE, waiting, now=now, due=now
        )
        follow = planning.FollowUp(
            enrollment_id=enrollment_id,
            subscriber_id=session.get(Enrollment, enrollment_id).subscriber_id,  # type: ignore[union-attr]
            started_at=now,
            time_zone="UTC",
            window=sequence.window,
            next_step_id=None,
            next_day_offset=0,
        )
    with db.engine.begin() as conn:
        planning.schedule_next(conn, [(follow, now)], now, 86400)
    with db.session() as session:
        enrollment = session.get(Enrollment, enrollment_id)
        assert enrollment is not None and enrollment.status is EnrollmentStatus.ACTIVE
