"""The periodic scan: reap stale claims, claim what is due, hand batches of ids to workers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from newsletter.delivery import breaker, claims, heartbeat
from newsletter.schedule import REAL_DAY

log = logging.getLogger(__name__)

# One tick stops after this many claims so a huge backlog cannot starve the beat.
MAX_CLAIMS_PER_TICK = 20


def dispatch(
    sessions: Callable[[], Session],
    now: datetime,
    *,
    dispatch_batch_size: int,
    send_batch_size: int,
    claim_timeout_seconds: float,
    enqueue: Callable[[list[int], datetime], None],
    max_in_flight: int | None = None,
    day_seconds: float = REAL_DAY,
) -> int:
    """Run one dispatch tick; returns how many deliveries were handed to workers.

    `enqueue(ids, claim)` queues one batch with the time that identifies its claim. With
    `max_in_flight`, claims stop when that many deliveries are claimed and unsent (the
    workers' queue is deep enough; what is due waits in the table, not in the broker).
    A row that a worker already stopped on (reaped) goes in a batch of its own, so that if it
    stops a worker again it takes no innocent mail with it. Nothing is claimed while the
    bounce breaker holds sending. Each tick leaves its heartbeat, held or not.
    """
    with sessions() as session, session.begin():
        heartbeat.beat(session, heartbeat.DISPATCH, now)
        claims.reap_stale(session, now, claim_timeout_seconds, day_seconds)
        trip = breaker.active_trip(session)
        if trip is not None:
            log.warning("dispatch: sending holds (bounce breaker): %s", trip.reason)
            return 0
        room = max_in_flight - claims.count_claimed(session) if max_in_flight else None
    handed = 0
    for _ in range(MAX_CLAIMS_PER_TICK):
        size = dispatch_batch_size if room is None else min(dispatch_batch_size, room)
        if size <= 0:
            log.info(
                "dispatch: %d deliveries already in flight; claiming more later", max_in_flight
            )
            break
        with sessions() as session, session.begin():
            claimed = claims.claim(session, now, size)
        if room is not None:
            room -= len(claimed)
        batches = _batches(claimed, send_batch_size)
        for index, batch in enumerate(batches):
            try:
                enqueue(batch, now)
            except Exception:
                # Claims whose task never reached the broker go straight back to the queue
                # instead of waiting for the reaper.
                unqueued = [i for rest in batches[index:] for i in rest]
                log.exception("could not queue a batch; releasing %d claims", len(unqueued))
                with sessions() as session, session.begin():
                    claims.release_claims(session, unqueued)
                return handed
            handed += len(batch)
        if len(claimed) < size:
            break
    if handed:
        log.info("dispatched %d deliveries", handed)
    return handed


def _batches(claimed: list[tuple[int, int]], size: int) -> list[list[int]]:
    """Batches of at most `size` ids; each row that was reaped before goes alone."""
    suspects = [[delivery_id] for delivery_id, reaps in claimed if reaps]
    clean = [delivery_id for delivery_id, reaps in claimed if not reaps]
    return [clean[i : i + size] for i in range(0, len(clean), size)] + suspects
