"""The sequences an editor manages: the list, a new empty one, the title, the default.

Each change raises `CatalogueError(field, message)` for bad input before it writes anything,
and returns what an audit entry needs (the values before and after).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from newsletter.content.sequences import is_slug
from newsletter.models import Enrollment, EnrollmentStatus, Sequence, SequenceStatus, Step

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
    status: str


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
            status=sequence.status.value,
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
    """A new sequence without parts (the editor adds them), a draft until it is activated.

    It is offered to signups only once active, so it becomes the default only if it is the
    first sequence of all.
    """
    title = _title(title)
    if not is_slug(slug):
        raise CatalogueError(
            "slug", "Lower-case letters, digits and dashes, at most 100 characters."
        )
    if session.scalar(select(Sequence.id).where(Sequence.slug == slug)) is not None:
        raise CatalogueError("slug", f"A sequence named {slug} exists already.")
    first = not session.scalar(select(func.count(Sequence.id)))
    sequence = Sequence(
        slug=slug, title=title, description="", is_default=first, status=SequenceStatus.DRAFT
    )
    session.add(sequence)
    session.flush()
    return sequence


def retitle(session: Session, sequence: Sequence, title: str) -> tuple[str, str]:
    """Change the title (mail headers and pages show it at once); returns (before, after).

    The send window is part of a version (content/drafts.update_settings), not changed here.
    """
    before, sequence.title = sequence.title, _title(title)
    session.flush()
    return before, sequence.title


def set_tracking(session: Session, sequence: Sequence, on: bool) -> tuple[bool, bool]:
    """Turn counting opens and link clicks on or off; returns (before, after).

    A direct setting, not part of a version: it changes no part anyone receives, only whether
    the next mail sent carries tracked links, and turning it off must not wait for a publish.
    """
    before, sequence.tracking = bool(sequence.tracking), on
    session.flush()
    return before, on


def make_default(session: Session, sequence: Sequence) -> str | None:
    """Make `sequence` the signup page's default, the only one; returns the previous one's slug.

    A sequence without parts cannot be the default: a signup would enroll people in nothing.
    """
    if not _has_parts(session, sequence):
        raise CatalogueError("default", "A sequence without parts cannot be the default.")
    if sequence.status is SequenceStatus.DRAFT:
        raise CatalogueError("default", "Activate the sequence before it becomes the default.")
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


def _has_parts(session: Session, sequence: Sequence) -> bool:
    # Live (published) parts: a draft's parts reach nobody.
    return bool(sequence.steps)


def activate(session: Session, sequence: Sequence) -> None:
    """Offer a draft sequence to signups; it needs published parts first."""
    if sequence.status is not SequenceStatus.DRAFT:
        raise CatalogueError("status", f"The sequence is {sequence.status.value} already.")
    if not _has_parts(session, sequence):
        raise CatalogueError("status", "Publish its parts first: a signup would get nothing.")
    sequence.status = SequenceStatus.ACTIVE
    session.flush()
