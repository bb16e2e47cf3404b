"""Thin Celery tasks: they take ids, call one service and return."""

from __future__ import annotations

import logging

from celery import shared_task

from newsletter import clock
from newsletter.db import db
from newsletter.runtime import runtime
from newsletter.services import dispatch, sending

log = logging.getLogger(__name__)


@shared_task(name="newsletter.dispatch_due")
def dispatch_due() -> int:
    """Claim due deliveries and queue one send task per delivery."""
    settings = runtime().settings
    return dispatch.dispatch(
        db.session,
        clock.now(),
        batch_size=settings.dispatch_batch_size,
        claim_timeout_seconds=settings.claim_timeout_seconds,
        enqueue=lambda delivery_id: send_delivery.delay(delivery_id),
    )


@shared_task(name="newsletter.send_delivery")
def send_delivery(delivery_id: int) -> str:
    """Send one claimed delivery."""
    rt = runtime()
    outcome = sending.deliver(
        db.session,
        rt.composer,
        rt.transport(),
        delivery_id,
        clock.now,
        rt.settings.drip_day_seconds,
    )
    return outcome.value


def kick() -> None:
    """Ask for a dispatch tick now (after a signup or confirm) instead of at the next beat.

    Best effort: if the broker is unreachable the rows are already in the database and the
    next beat tick finds them.
    """
    try:
        dispatch_due.apply_async(retry=False)
    except Exception:  # noqa: BLE001 - any broker failure is fine to ignore here
        log.warning("broker unreachable; the next beat tick will send")
