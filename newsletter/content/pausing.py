"""Pausing and resuming a whole sequence: its people keep their places, nothing is sent.

Pausing holds every waiting part of the sequence's steps (`delivery/holds.py`); a part
planned while it is paused (after a mail that was already on its way, or for someone who
confirms meanwhile) is born held. Resuming lets go of what the sequence held, due no sooner
than now, except what a paused enrollment holds on its own account: that person stays paused.
Each reader's timeline gets an event saying what happened and why.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from newsletter.delivery import holds
from newsletter.delivery.holds import ActionRefused
from newsletter.models import OPEN_ENROLLMENT_STATUSES, Enrollment, Sequence, SequenceStatus


def _readers(sequence: Sequence) -> ColumnElement[bool]:
    """The sequence's enrollments that still have a way to go."""
    return (Enrollment.sequence_id == sequence.id) & Enrollment.status.in_(OPEN_ENROLLMENT_STATUSES)


def pause_sequence(session: Session, sequence: Sequence, now: datetime, by: str = "admin") -> int:
    """Pause an active sequence: hold its waiting parts; how many were held.

    Raises ActionRefused for a sequence that is not active (a draft sends nothing anyway).
    """
    if sequence.status is not SequenceStatus.ACTIVE:
        raise ActionRefused(f"The sequence is {sequence.status.value}; only an active one pauses.")
    sequence.status = SequenceStatus.PAUSED
    session.flush()
    held = holds.hold(session, holds.of_sequence(sequence.id))
    holds.note_enrolled(
        session,
        _readers(sequence),
        "paused",
        {"sequence": sequence.slug, "reason": f"sequence paused by {by}"},
        now,
    )
    return held


def resume_sequence(session: Session, sequence: Sequence, now: datetime, by: str = "admin") -> int:
    """Resume a paused sequence: its held parts are due again (no sooner than now); how many.

    A person paused on their own stays paused. Raises ActionRefused for a sequence that is
    not paused.
    """
    if sequence.status is not SequenceStatus.PAUSED:
        raise ActionRefused(f"The sequence is {sequence.status.value}, not paused.")
    sequence.status = SequenceStatus.ACTIVE
    session.flush()
    released = holds.release(
        session,
        holds.of_sequence(sequence.id) & holds.not_of_paused_enrollments(sequence.id),
        now,
    )
    holds.note_enrolled(
        session,
        _readers(sequence),
        "resumed",
        {"sequence": sequence.slug, "reason": f"sequence resumed by {by}"},
        now,
    )
    return released
