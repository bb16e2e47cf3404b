"""Thin Celery tasks: they take ids, call one service and return."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from celery import shared_task

from newsletter import clock
from newsletter.audience import csv_import, figures
from newsletter.db import db
from newsletter.delivery import dispatch, heartbeat, sending
from newsletter.runtime import runtime

log = logging.getLogger(__name__)


@shared_task(name="newsletter.dispatch_due")
def dispatch_due() -> int:
    """Claim due deliveries and queue them in batches for the workers."""
    rt = runtime()
    settings = rt.settings
    if rt.flow().paused():
        # The tick ran; only sending waits. The dashboard tells a pause from a stopped beat.
        with db.transaction() as session:
            heartbeat.beat(session, heartbeat.DISPATCH, clock.now())
        return 0
    return dispatch.dispatch(
        db.session,
        clock.now(),
        dispatch_batch_size=settings.dispatch_batch_size,
        send_batch_size=settings.send_batch_size,
        claim_timeout_seconds=settings.claim_timeout_seconds,
        max_in_flight=settings.max_in_flight,
        enqueue=lambda ids, claim: send_batch.delay(ids, claim.isoformat()),
        day_seconds=settings.drip_day_seconds,
    )


@shared_task(name="newsletter.refresh_figures")
def refresh_figures() -> None:
    """Recount the dashboard's figures, so that no reader waits for them."""
    with db.transaction() as session:
        figures.refresh_dashboard(session, clock.now())


@shared_task(name="newsletter.recount_funnel")
def recount_funnel(sequence_id: int, period: str) -> bool:
    """Count a stale funnel again, for the page that served it stale; whether it did."""
    with db.transaction() as session:
        return figures.recount_funnel(session, sequence_id, period, clock.now())


@shared_task(name="newsletter.send_batch")
def send_batch(delivery_ids: list[int], claim: str) -> dict[str, int]:
    """Send a batch of claimed deliveries over this worker's SMTP connection."""
    rt = runtime()
    flow = rt.flow()
    claimed_at = datetime.fromisoformat(claim)
    outcomes = sending.deliver_batch(
        db.engine,
        rt.composer,
        rt.transport(),
        delivery_ids,
        clock.now,
        rt.policy,
        claim=claimed_at,
        # A little before the reaper's cutoff, so a mail is never begun on an expired claim.
        claim_expires=claimed_at + timedelta(seconds=0.9 * rt.settings.claim_timeout_seconds),
        group_size=rt.settings.record_group_size,
        hooks=sending.Hooks(
            should_stop=flow.paused,
            before_send=flow.wait_for_slot,
            on_outcome=flow.record,
            on_hold=flow.hold,
        ),
        breaker=rt.breaker(),
    )
    return {outcome.value: count for outcome, count in outcomes.items()}


@shared_task(name="newsletter.import_subscribers")
def import_subscribers(import_id: int) -> str | None:
    """Run a queued CSV import (audience/csv_import.run) from the shared imports folder."""
    rt = runtime()
    status = csv_import.run(
        db.session,
        import_id,
        csv_import.folder(rt.settings.instance_dir),
        clock.now,
        rt.settings.drip_day_seconds,
    )
    return status.value if status else None


def kick() -> None:
    """Ask for a dispatch tick now (after a signup or confirm) instead of at the next beat.

    Best effort: if the broker is unreachable the rows are already in the database and the
    next beat tick finds them.
    """
    try:
        dispatch_due.apply_async(retry=False)
    except Exception:  # noqa: BLE001 - any broker failure is fine to ignore here
        log.warning("broker unreachable; the next beat tick will send")
