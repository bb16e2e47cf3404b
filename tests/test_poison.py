"""Poison never spreads: one mail that breaks its build or kills its worker fails alone.

The worker deaths here are real: the batch runs in a forked process that exits on the spot
(as a segfault or the kernel's OOM killer would end it) while sending the poisoned mail; the
database is left exactly as such a worker leaves it. The SMTP server is the test's real one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timedelta

from flask import Flask
from sqlalchemy import func, select

from newsletter import clock
from newsletter.db import db
from newsletter.delivery import claims, dispatch
from newsletter.mail.transport import SmtpTransport
from newsletter.models import Delivery, DeliveryKind, DeliveryState, Event, Sequence
from tests.helpers.apps import runtime_of
from tests.helpers.sending import active_subscriber, claim_all, delivery, run_batch
from tests.helpers.smtp import SmtpSink

POISON = "poison@example.org"


def send(app: Flask, ids: list[int], claim: datetime | None = None) -> dict[str, int]:
    """One batch, as a worker runs it; its outcomes by name."""
    outcomes = run_batch(app, ids, claim=claim, group_size=1)
    return {outcome.value: n for outcome, n in outcomes.items()}


class _DiesOnPoison(SmtpTransport):
    """The real transport, in a process that dies while sending to POISON."""

    def send_data(self, sender: str, recipients: Iterable[str], payload: bytes) -> None:
        recipients = list(recipients)
        if POISON in recipients:
            os._exit(17)
        super().send_data(sender, recipients, payload)


def run_batch_in_a_dying_worker(app: Flask, ids: list[int], claim: datetime) -> int:
    """Run the batch in a forked worker that dies on the poisoned mail; its exit code."""
    pid = os.fork()
    if pid == 0:  # the worker: its own database connections, a real death
        code = 0
        try:
            db.engine.dispose(close=False)
            transport = _DiesOnPoison(runtime_of(app).settings)
            run_batch(app, ids, transport, claim=claim, group_size=1)
        except BaseException:  # noqa: BLE001 - the child must never return into pytest
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def received(sink: SmtpSink) -> list[str]:
    return sorted(str(m["To"].addresses[0].addr_spec) for m in sink.messages)


def email_of(delivery_id: int) -> str:
    with db.session() as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        return row.subscriber.email


def uncertain_for(delivery_id: int) -> int:
    with db.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Event)
                .where(Event.kind == "uncertain", Event.delivery_id == delivery_id)
            )
            or 0
        )


def test_a_mail_that_cannot_be_built_fails_alone(app: Flask, smtp_sink: SmtpSink) -> None:
    for name in ("a", "b", "c"):
        active_subscriber(f"{name}@example.org")
    with db.transaction() as session:  # a last part whose data is broken, as by a bad edit
        sequence = session.scalars(select(Sequence)).one()
        sequence.steps[0].resources = ["not a link"]  # type: ignore[list-item]
        sequence.steps[0].teaser = "Tomorrow: more"
    ids = [i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP]
    outcomes = send(app, ids)
    assert outcomes == {"failed": 3}
    for delivery_id in ids:
        row = delivery(delivery_id)
        assert row.state is DeliveryState.FAILED
        assert "cannot build the message: ValueError" in (row.last_error or "")
    # The course goes on: each reader's part 2 is scheduled despite the broken part 1.
    with db.session() as session:
        following = session.scalars(
            select(Delivery).where(Delivery.kind == DeliveryKind.STEP, Delivery.id.not_in(ids))
        ).all()
    assert len(following) == 3 and {d.state for d in following} == {DeliveryState.SCHEDULED}


def test_a_mail_that_kills_its_worker_fails_alone_after_max_reaps(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    names = ["a", "b", "poison", "c", "d", "e"]
    for name in names:
        active_subscriber(f"{name}@example.org")
    ids = [i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP]
    poison_id = next(i for i in ids if email_of(i) == POISON)
    with db.transaction() as session:  # the claim, as the dispatcher stamps it
        session.execute(
            Delivery.__table__.update()  # type: ignore[attr-defined]
            .where(Delivery.id.in_(ids))
            .values(claimed_at=clock.now())
        )
    claim = delivery(ids[0]).claimed_at
    assert claim is not None

    # 1. The worker dies on the poisoned mail, half way through its batch.
    assert run_batch_in_a_dying_worker(app, ids, claim) == 17
    assert received(smtp_sink) == ["a@example.org", "b@example.org"]

    # 2. The broker redelivers the task: the rows its dead run had begun go back to the queue
    #    (counted as uncertain), everything it never reached is sent, and this run survives.
    outcomes = send(app, ids, claim)
    assert outcomes.get("sent", 0) >= 2 and outcomes.get("held", 0) >= 1
    poison = delivery(poison_id)
    assert poison.state is DeliveryState.RETRY and poison.reaps == 1
    assert uncertain_for(poison_id) == 1
    assert POISON not in received(smtp_sink)

    # 3. The dispatcher sends a row that stopped a worker in a batch of its own, so it takes
    #    nobody else down with it: twice more it kills its worker, once given back by the
    #    redelivered task, once by the reaper. Then it fails with the reason.
    for round_, by_reaper in ((2, False), (3, True)):
        batches: list[list[int]] = []
        now = clock.now()
        dispatch.dispatch(
            db.session,
            now,
            dispatch_batch_size=100,
            send_batch_size=100,
            claim_timeout_seconds=600,
            enqueue=lambda batch, _claim, found=batches: found.append(batch),
        )
        assert [poison_id] in batches
        send(app, [i for b in batches if b != [poison_id] for i in b], now)
        assert run_batch_in_a_dying_worker(app, [poison_id], now) == 17
        if by_reaper:
            with db.transaction() as session:
                claims.reap_stale(session, now + timedelta(seconds=601), 600)
        else:
            send(app, [poison_id], now)
        assert delivery(poison_id).reaps == round_
    poison = delivery(poison_id)
    assert poison.state is DeliveryState.FAILED
    assert "a worker stopped while sending this mail 3 times" in (poison.last_error or "")
    # Everyone else got part 1; a copy twice only where the engine counted an uncertain send.
    got = received(smtp_sink)
    assert sorted(set(got)) == sorted(f"{n}@example.org" for n in names if n != "poison")
    for delivery_id in ids:
        email = email_of(delivery_id)
        assert got.count(email) <= 1 + uncertain_for(delivery_id), email
    # The reader of the poisoned part still gets the rest of the course.
    with db.session() as session:
        nexts = session.scalars(
            select(Delivery).where(
                Delivery.subscriber_id == poison.subscriber_id, Delivery.id != poison_id
            )
        ).all()
    assert any(d.kind is DeliveryKind.STEP and d.state is DeliveryState.SCHEDULED for d in nexts)
