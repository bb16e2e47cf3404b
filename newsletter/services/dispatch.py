"""The periodic scan: reap stale claims, claim what is due, hand batches of ids to workers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from newsletter.services import drip

log = logging.getLogger(__name__)

# One tick stops after this many claims so a huge backlog cannot starve the beat.
MAX_CLAIMS_PER_TICK = 20


def dispatch(
    sessions: Callable[[], Session],
    now: datetime,
    *,
    claim_size: int,
    send_batch_size: int,
    claim_timeout_seconds: float,
    enqueue: Callable[[list[int], datetime], None],
    max_in_flight: int | None = None,
) -> int:
    """Run one dispatch tick; returns how many deliveries were handed to workers.

    `enqueue(ids, claim)` queues one batch with the time that identifies its claim. With
    `max_in_flight`, claims stop when that many deliveries are claimed and unsent (the
    workers' queue is deep enough; what is due waits in the table, not in the broker).
    """
    with sessions() as session, session.begin():
        drip.reap_stale(session, now, claim_timeout_seconds)
        room = max_in_flight - drip.count_claimed(session) if max_in_flight else None
    handed = 0
    for _ in range(MAX_CLAIMS_PER_TICK):
        size = claim_size if room is None else min(claim_size, room)
        if size <= 0:
            log.info(
                "dispatch: %d deliveries already in flight; claiming more later", max_in_flight
            )
            break
        with sessions() as session, session.begin():
            ids = drip.claim_due(session, now, size)
        if room is not None:
            room -= len(ids)
        for start in range(0, len(ids), send_batch_size):
            batch = ids[start : start + send_batch_size]
            try:
                enqueue(batch, now)
            except Exception:
                # Claims whose task never reached the broker go straight back to the queue
                # instead of waiting for the reaper.
                log.exception("could not queue a batch; releasing %d claims", len(ids) - start)
                with sessions() as session, session.begin():
                    drip.release_claims(session, ids[start:])
                return handed
            handed += len(batch)
        if len(ids) < size:
            break
    if handed:
        log.info("dispatched %d deliveries", handed)
    return handed
