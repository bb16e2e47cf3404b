"""Claims: the one place rows move from waiting to claimed, and back when a worker stops.

The dispatcher claims due rows (`claim`); a task that never reached the broker gives its
claims back (`release_claims`); the reaper takes back claims older than the timeout, and a
redelivered task the rows its dead run had begun (`give_back`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.delivery import planning
from newsletter.models import WAITING_STATES, Delivery, DeliveryState, Event
from newsletter.schedule import REAL_DAY

log = logging.getLogger(__name__)

# A delivery taken back this many times from a worker that stopped while sending it fails
# with the reason instead of stopping workers forever (a poison row).
MAX_REAPS = 3


def claim(session: Session, now: datetime, limit: int) -> list[tuple[int, int]]:
    """Claim up to `limit` due deliveries, oldest first: (id, reaps) of each, by id.

    The claim is stamped with `now` (claimed_at), which identifies it: the task that carries
    these ids carries that stamp too, and sends only rows still holding it. `reaps` says how
    often a worker already stopped while holding the row (see `give_back`).

    Two dispatchers can never claim the same row: on PostgreSQL the candidate rows are locked
    with FOR UPDATE SKIP LOCKED (a second dispatcher takes the next rows instead of waiting);
    on SQLite the UPDATE ... WHERE id IN (SELECT ...) is one atomic statement under the
    database's single writer lock. Served by ix_deliveries_state_due.
    """
    candidates = (
        select(Delivery.id)
        .where(Delivery.state.in_(WAITING_STATES), Delivery.due_at <= now)
        .order_by(Delivery.due_at, Delivery.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    claimed = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(candidates.scalar_subquery()))
        .where(Delivery.state.in_(WAITING_STATES))
        .values(state=DeliveryState.CLAIMED, claimed_at=now)
        .returning(Delivery.id, Delivery.reaps)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted((int(row.id), int(row.reaps)) for row in claimed)


def claim_due(session: Session, now: datetime, limit: int) -> list[int]:
    """Claim up to `limit` due deliveries (see `claim`); their ids, in order."""
    return [delivery_id for delivery_id, _ in claim(session, now, limit)]


def count_claimed(session: Session) -> int:
    """How many deliveries are claimed and not yet sent (served by ix_deliveries_state_claimed)."""
    return int(
        session.scalar(select(func.count()).where(Delivery.state == DeliveryState.CLAIMED)) or 0
    )


def release_claims(session: Session, ids: list[int]) -> int:
    """Put claimed deliveries back in the queue unsent (their task never ran or was stopped)."""
    if not ids:
        return 0
    result = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.state == DeliveryState.CLAIMED)
        .values(state=DeliveryState.SCHEDULED, claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def give_back(
    session: Session,
    where: ColumnElement[bool],
    now: datetime,
    reason: str,
    day_seconds: float = REAL_DAY,
) -> int:
    """Take claimed rows back from a worker that stopped holding them; how many.

    A row whose sending had begun (attempted within its claim) may have been delivered: it is
    offered again with the same Message-ID and recorded as an "uncertain" event, the one
    window that cannot be closed, and it counts as a reap. The dispatcher sends a reaped row
    in a batch of its own, so a row that stops workers stops only its own batch; after
    MAX_REAPS it fails with the reason instead of looping.
    """
    rows = session.execute(
        select(
            Delivery.id,
            Delivery.subscriber_id,
            Delivery.reaps,
            Delivery.sending_begun.label("begun"),
        ).where(Delivery.state == DeliveryState.CLAIMED, where)
    ).all()
    if not rows:
        return 0
    poison: list[int] = []
    for row in rows:
        if not row.begun:
            continue
        session.add(
            Event(
                subscriber_id=row.subscriber_id,
                delivery_id=row.id,
                kind="uncertain",
                data={"reason": f"{reason} after sending began"},
                created_at=now,
            )
        )
        if row.reaps + 1 >= MAX_REAPS:
            poison.append(row.id)
    begun = [row.id for row in rows if row.begun]
    fresh = [row.id for row in rows if not row.begun]
    if begun:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(begun))
            .values(state=DeliveryState.RETRY, reaps=Delivery.reaps + 1, last_error=reason)
            .execution_options(synchronize_session=False)
        )
    if fresh:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(fresh))
            .values(state=DeliveryState.RETRY, last_error=reason)
            .execution_options(synchronize_session=False)
        )
    for delivery in session.scalars(select(Delivery).where(Delivery.id.in_(poison))):
        delivery.state = DeliveryState.FAILED
        delivery.last_error = (
            f"{reason}: a worker stopped while sending this mail {delivery.reaps} times, "
            "so it is not tried again"
        )
        log.error("delivery %d failed: %s", delivery.id, delivery.last_error)
        planning.move_on(session, delivery, now, day_seconds)
    if begun:
        log.warning(
            "%s: %d deliveries back in the queue (%d possibly sent, %d failed for good)",
            reason,
            len(rows),
            len(begun),
            len(poison),
        )
    return len(rows)


def reap_stale(
    session: Session, now: datetime, timeout_seconds: float, day_seconds: float = REAL_DAY
) -> int:
    """Return claims older than the timeout (lost task, killed worker) to the queue."""
    cutoff = now - timedelta(seconds=timeout_seconds)
    stale = or_(Delivery.claimed_at.is_(None), Delivery.claimed_at < cutoff)
    count = give_back(session, stale, now, "claim expired; returned by the reaper", day_seconds)
    if count:
        log.warning("reaper returned %d stale claims to the queue", count)
    return count
