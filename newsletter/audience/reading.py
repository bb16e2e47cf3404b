"""The web archive of a series: the parts a subscriber has received, and nothing ahead."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from newsletter.models import Delivery, DeliveryKind, DeliveryState, Sequence, Step


def received_steps(session: Session, subscriber_id: int) -> list[Step]:
    """Steps whose mail reached this subscriber, by sequence and part, each once."""
    steps = session.scalars(
        select(Step)
        .join(Delivery, Delivery.step_id == Step.id)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.kind == DeliveryKind.STEP,
            Delivery.state == DeliveryState.SENT,
            # A step a published version removed leaves the archive with the series.
            Step.removed_at.is_(None),
        )
        .options(joinedload(Step.sequence).selectinload(Sequence.steps))
        .order_by(Step.sequence_id, Step.position)
    ).unique()
    return list(dict.fromkeys(steps))


def received_step(session: Session, subscriber_id: int, step_id: int) -> Step | None:
    """One received step, or None if this subscriber has not been sent it (yet)."""
    return next((s for s in received_steps(session, subscriber_id) if s.id == step_id), None)
