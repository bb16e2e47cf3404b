"""Sequences for a test, written straight to the database."""

from __future__ import annotations

from newsletter import clock
from newsletter.db import db
from newsletter.models import Sequence, SequenceStatus, Step


def other_sequence(title: str, status: SequenceStatus = SequenceStatus.ACTIVE) -> int:
    """Another sequence of three daily parts beside the seed; its id."""
    with db.transaction() as session:
        slug = title.lower().replace(" ", "-")
        sequence = Sequence(slug=slug, title=title, status=status, created_at=clock.now())
        session.add(sequence)
        session.flush()
        for position in (1, 2, 3):
            session.add(
                Step(
                    sequence_id=sequence.id,
                    position=position,
                    day_offset=position - 1,
                    subject=f"{title} {position}",
                    body_md="Body",
                )
            )
        return sequence.id
