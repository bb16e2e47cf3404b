"""The claim: two dispatchers never win the same row; stale claims come back."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from flask import Flask
from sqlalchemy import func, select

from newsletter import clock
from newsletter.config import load_settings
from newsletter.db import db
from newsletter.delivery import claims, dispatch
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Subscriber,
    SubscriberStatus,
)


def make_due(count: int) -> None:
    now = clock.now()
    with db.transaction() as session:
        for index in range(count):
            sub = Subscriber(email=f"s{index}@example.org", status=SubscriberStatus.PENDING)
            session.add(sub)
            session.flush()
            session.add(
                Delivery(
                    kind=DeliveryKind.CONFIRM,
                    subscriber_id=sub.id,
                    due_at=now - timedelta(seconds=index),
                )
            )


def test_concurrent_claims_never_overlap(app: Flask) -> None:
    make_due(400)
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def claimer() -> None:
        try:
            barrier.wait()
            mine: list[int] = []
            while True:
                with db.transaction() as session:
                    batch = claims.claim_due(session, clock.now(), 25)
                if not batch:
                    break
                mine.extend(batch)
            results.append(mine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    claimed = [i for batch in results for i in batch]
    assert len(claimed) == len(set(claimed)) == 400
    with db.session() as session:
        states = set(session.scalars(select(Delivery.state)))
    assert states == {DeliveryState.CLAIMED}


def test_claim_takes_only_due_rows_oldest_first(app: Flask) -> None:
    make_due(5)
    with db.transaction() as session:
        future = session.scalars(select(Delivery).order_by(Delivery.id)).first()
        assert future is not None
        future.due_at = clock.now() + timedelta(hours=1)
    with db.transaction() as session:
        ids = claims.claim_due(session, clock.now(), 2)
    with db.session() as session:
        dues = [session.get(Delivery, i).due_at for i in ids]  # type: ignore[union-attr]
        rest = session.scalars(
            select(Delivery.due_at).where(
                Delivery.state == DeliveryState.SCHEDULED, Delivery.id != future.id
            )
        ).all()
    assert len(ids) == 2 and max(dues) <= min(rest)


def test_reaper_returns_stale_claims(app: Flask) -> None:
    make_due(3)
    with db.transaction() as session:
        ids = claims.claim_due(session, clock.now() - timedelta(minutes=30), 10)
    assert ids == []  # nothing was due half an hour ago
    with db.transaction() as session:
        ids = claims.claim_due(session, clock.now(), 10)
    with db.transaction() as session:
        assert claims.reap_stale(session, clock.now(), 600) == 0  # fresh claims stay
        assert claims.reap_stale(session, clock.now() + timedelta(minutes=11), 600) == 3
    with db.session() as session:
        assert set(session.scalars(select(Delivery.state))) == {DeliveryState.RETRY}


def test_dispatch_releases_claims_when_the_broker_is_away(app: Flask) -> None:
    make_due(10)
    queued: list[int] = []

    def flaky_enqueue(batch: list[int], claim: datetime) -> None:
        if len(queued) == 4:
            raise ConnectionError("broker went away")
        queued.extend(batch)

    handed = dispatch.dispatch(
        db.session,
        clock.now(),
        dispatch_batch_size=100,
        send_batch_size=2,
        claim_timeout_seconds=600,
        enqueue=flaky_enqueue,
    )
    assert handed == 4
    with db.session() as session:
        claimed = session.scalar(
            select(func.count()).where(Delivery.state == DeliveryState.CLAIMED)
        )
        scheduled = session.scalar(
            select(func.count()).where(Delivery.state == DeliveryState.SCHEDULED)
        )
    assert (claimed, scheduled) == (4, 6)


def test_dispatch_claims_no_more_than_the_in_flight_ceiling(app: Flask) -> None:
    make_due(30)
    queued: list[list[int]] = []

    def tick() -> int:
        return dispatch.dispatch(
            db.session,
            clock.now(),
            dispatch_batch_size=4,
            send_batch_size=2,
            claim_timeout_seconds=600,
            enqueue=lambda batch, claim: queued.append(batch),
            max_in_flight=10,
        )

    assert tick() == 10  # three claims of 4, 4 and 2, then the ceiling
    assert tick() == 0  # nothing was sent meanwhile: no room
    with db.transaction() as session:  # a worker sends three of them
        for delivery_id in queued[0] + queued[1][:1]:
            row = session.get(Delivery, delivery_id)
            assert row is not None
            row.state = DeliveryState.SENT
    assert tick() == 3
    with db.session() as session:
        claimed = session.scalar(
            select(func.count()).where(Delivery.state == DeliveryState.CLAIMED)
        )
    assert claimed == 10


def test_max_in_flight_follows_the_rate_limit() -> None:
    base = {"SECRET_KEY": "k" * 32, "CLAIM_TIMEOUT_SECONDS": "600"}
    assert load_settings(base).max_in_flight == 5000
    assert load_settings({**base, "SEND_RATE_PER_SECOND": "2"}).max_in_flight == 600
    assert load_settings({**base, "SEND_RATE_PER_SECOND": "1000"}).max_in_flight == 5000
