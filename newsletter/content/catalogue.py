"""The sequences an editor manages: the list, a new empty one, send windows, the default.

Each change raises `CatalogueError(field, message)` for bad input before it writes anything,
and returns what an audit entry needs (the values before and after).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from newsletter.content.sequences import is_slug
from newsletter.models import Enrollment, EnrollmentStatus, Sequence, Step

TITLE_MAX = 200
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class CatalogueError(ValueError):
    """Bad input for one field of a sequence; nothing was changed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SequenceRow:
    """One line of the sequences list."""

    id: int
    slug: str
    title: str
    steps: int
    in_progress: int
    is_default: bool

    @property
    def status(self) -> str:
        """What the list shows: a sequence without parts sends nothing."""
        return "active" if self.steps else "empty"


def sequence_rows(session: Session) -> list[SequenceRow]:
    """Every sequence with its number of parts and of people in progress, by title.

    Two grouped counts, not one per sequence: the list stays one page of a few queries
    however many sequences and enrollments there are.
    """
    steps: dict[int, int] = {
        sequence_id: count
        for sequence_id, count in session.execute(
            select(Step.sequence_id, func.count()).group_by(Step.sequence_id)
        )
    }
    people: dict[int, int] = {
        sequence_id: count
        for sequence_id, count in session.execute(
            select(Enrollment.sequence_id, func.count())
            .where(Enrollment.status == EnrollmentStatus.ACTIVE)
            .group_by(Enrollment.sequence_id)
        )
    }
    return [
        SequenceRow(
            id=sequence.id,
            slug=sequence.slug,
            title=sequence.title,
            steps=int(steps.get(sequence.id, 0)),
            in_progress=int(people.get(sequence.id, 0)),
            is_default=sequence.is_default,
        )
        for sequence in session.scalars(select(Sequence).order_by(Sequence.title, Sequence.id))
    ]


def _title(title: str) -> str:
    title = " ".join(title.split())
    if not title:
        raise CatalogueError("title", "The title is empty.")
    if len(title) > TITLE_MAX:
        raise CatalogueError("title", f"At most {TITLE_MAX} characters.")
    return title


def create_sequence(session: Session, *, title: str, slug: str) -> Sequence:
    """A new sequence without parts (the editor adds them); the default only if it is the first."""
    title = _title(title)
    if not is_slug(slug):
        raise CatalogueError(
            "slug", "Lower-case letters, digits and dashes, at most 100 characters."
        )
    if session.scalar(select(Sequence.id).where(Sequence.slug == slug)) is not None:
        raise CatalogueError("slug", f"A sequence named {slug} exists already.")
    first = not session.scalar(select(func.count(Sequence.id)))
    sequence = Sequence(slug=slug, title=title, description="", is_default=first)
    session.add(sequence)
    session.flush()
    return sequence


def settings_of(sequence: Sequence) -> dict[str, Any]:
    """The send settings as an audit entry shows them."""
    return {
        "title": sequence.title,
        "send_hour": sequence.send_hour,
        "send_end_hour": sequence.send_end_hour,
        "send_days": sequence.send_days,
        "is_default": sequence.is_default,
    }


def update_settings(
    session: Session,
    sequence: Sequence,
    *,
    title: str,
    send_hour: int,
    send_end_hour: int,
    send_days: set[int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Change the title and the send window (local hours [start, end) on ISO weekdays).

    Returns the settings before and after. A change of window applies to parts planned from
    now on: a part already due keeps its time (the engine moves it into the window when sent).
    """
    title = _title(title)
    if not 0 <= send_hour <= 23:
        raise CatalogueError("send_hour", "An hour from 0 to 23.")
    if not 1 <= send_end_hour <= 24:
        raise CatalogueError("send_end_hour", "An hour from 1 to 24.")
    if send_end_hour <= send_hour:
        raise CatalogueError("send_end_hour", "The window must end after it starts.")
    if not send_days or not send_days <= set(range(1, 8)):
        raise CatalogueError("send_days", "Choose at least one day.")
    before = settings_of(sequence)
    sequence.title = title
    sequence.send_hour = send_hour
    sequence.send_end_hour = send_end_hour
    sequence.send_days = "".join(str(day) for day in sorted(send_days))
    session.flush()
    return before, settings_of(sequence)


def make_default(session: Session, sequence: Sequence) -> str | None:
    """Make `sequence` the signup page's default, the only one; returns the previous one's slug.

    A sequence without parts cannot be the default: a signup would enroll people in nothing.
    """
    if not session.scalar(select(func.count(Step.id)).where(Step.sequence_id == sequence.id)):
        raise CatalogueError("default", "A sequence without parts cannot be the default.")
    previous = session.scalar(
        select(Sequence.slug).where(Sequence.is_default.is_(True), Sequence.id != sequence.id)
    )
    # One statement clears the others, so there is never a moment with two defaults.
    session.execute(
        update(Sequence).where(Sequence.id != sequence.id).values(is_default=False),
        execution_options={"synchronize_session": "fetch"},
    )
    sequence.is_default = True
    session.flush()
    return previous
