"""The periodic scan: reap stale claims, claim what is due, hand ids to the workers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from newsletter.models import Delivery, DeliveryState
from newsletter.services import drip

log = logging.getLogger(__name__)

# One tick stops after this many batches so a huge backlog cannot starve the beat.
MAX_BATCHES_PER_TICK = 20


def _release(sessions: Callable[[], Session], ids: list[int]) -> None:
    # Claims whose task never reached the broker go straight back to the queue instead of
    # waiting for the reaper.
    with sessions() as session, session.begin():
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.state == DeliveryState.CLAIMED)
            .values(state=DeliveryState.SCHEDULED, claimed_at=None)
            .execution_options(synchronize_session=False)
        )


def dispatch(
    sessions: Callable[[], Session],
    now: datetime,
    *,
    batch_size: int,
    claim_timeout_seconds: float,
    enqueue: Callable[[int], None],
) -> int:
    """Run one dispatch tick; returns how many deliveries were handed to workers."""
    with sessions() as session, session.begin():
        drip.reap_stale(session, now, claim_timeout_seconds)
    handed = 0
    for _ in range(MAX_BATCHES_PER_TICK):
        with sessions() as session, session.begin():
            ids = drip.claim_due(session, now, batch_size)
        for index, delivery_id in enumerate(ids):
            try:
                enqueue(delivery_id)
            except Exception:
                log.exception(
                    "could not queue delivery %d; releasing the rest of the batch", delivery_id
                )
                _release(sessions, ids[index:])
                return handed
            handed += 1
        if len(ids) < batch_size:
            break
    if handed:
        log.info("dispatched %d deliveries", handed)
    return handed
