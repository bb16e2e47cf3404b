"""Database probes the fault suite polls while a case runs.

Each reads through `db_retry`, so a PostgreSQL connection killed under it (one of the faults)
is retried instead of failing the case.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select

from newsletter.db import db
from newsletter.models import (
    Delivery,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Subscriber,
    SubscriberStatus,
)
from tests.faults.smtp import FaultSmtp

OPEN_STATES = (DeliveryState.SCHEDULED, DeliveryState.CLAIMED, DeliveryState.RETRY)


@contextmanager
def reading() -> Iterator[Any]:
    """A short read-only session (retried by the caller if the connection was killed)."""
    with db.session() as session:
        yield session


def db_retry(fn: Callable[[], Any], attempts: int = 5) -> Any:
    """Run a read; a connection killed under it (the PostgreSQL fault) is retried."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception:  # noqa: BLE001 - the killed-connection fault surfaces as anything
            if attempt == attempts - 1:
                raise
            db.dispose()
            time.sleep(0.3)
    return None


def sent_claimed_after(moment: datetime) -> int:
    """Deliveries sent through a claim made after `moment` (engine clock): proof of progress."""

    def read() -> int:
        with reading() as session:
            return int(
                session.scalar(
                    select(func.count(Delivery.id)).where(
                        Delivery.state == DeliveryState.SENT, Delivery.claimed_at > moment
                    )
                )
                or 0
            )

    result: int = db_retry(read)
    return result


def _claimed_subscribers(*conditions: Any) -> list[int]:
    def read() -> list[int]:
        with reading() as session:
            query = select(Delivery.subscriber_id).where(
                Delivery.state == DeliveryState.CLAIMED, *conditions
            )
            return list(session.scalars(query).all())

    result: list[int] = db_retry(read)
    return result


def in_flight_subscribers() -> list[int]:
    """Subscribers whose mail is being sent right now (claimed, and its attempt has begun)."""
    return _claimed_subscribers(Delivery.attempted_at >= Delivery.claimed_at)


def claimed_subscribers() -> list[int]:
    """Subscribers with a delivery claimed and waiting in its batch (its attempt not begun).

    Mail already in flight is the business of `in_flight_subscribers`.
    """
    return _claimed_subscribers(
        or_(Delivery.attempted_at.is_(None), Delivery.attempted_at < Delivery.claimed_at)
    )


def quiescent() -> tuple[bool, str]:
    """Every enrollment of an active subscriber completed and no delivery open."""

    def read() -> tuple[bool, str]:
        with reading() as session:
            unfinished = session.scalar(
                select(func.count(Enrollment.id))
                .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
                .where(
                    Subscriber.status == SubscriberStatus.ACTIVE,
                    Enrollment.status != EnrollmentStatus.COMPLETED,
                )
            )
            open_rows = session.execute(
                select(Delivery.id, Delivery.state, Delivery.attempts, Delivery.last_error)
                .where(Delivery.state.in_(OPEN_STATES))
                .order_by(Delivery.id)
            ).all()
        done = not unfinished and not open_rows
        detail = f"{unfinished} unfinished enrollments; open deliveries: " + ", ".join(
            f"#{i} {s.value} x{a} ({(e or '')[:60]})" for i, s, a, e in open_rows[:8]
        )
        return done, detail

    result: tuple[bool, str] = db_retry(read)
    return result


def wait_until_quiet(smtp: FaultSmtp, timeout: float = 120.0, settle: float = 2.5) -> float:
    """Wait (bounded) until the run is over; then a little longer, so late copies show up."""
    start = time.monotonic()
    deadline = start + timeout
    detail = ""
    while time.monotonic() < deadline:
        done, detail = quiescent()
        if done:
            before = smtp.count()
            time.sleep(settle)
            done, detail = quiescent()
            if done and smtp.count() == before:
                return time.monotonic() - start
        else:
            time.sleep(0.5)
    raise AssertionError(f"the run did not finish within {timeout:.0f}s: {detail}")
