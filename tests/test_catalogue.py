"""The sequences list and settings (content/catalogue.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.content.catalogue import (
    CatalogueError,
    activate,
    create_sequence,
    make_default,
    retitle,
    sequence_rows,
)
from newsletter.db import db
from newsletter.models import Enrollment, EnrollmentStatus, Sequence, Subscriber


def _seed(session: Session) -> Sequence:
    return session.scalars(select(Sequence).where(Sequence.slug == "emotional-distance")).one()


def test_the_list_counts_parts_and_people_in_progress(app: Flask) -> None:
    with db.transaction() as session:
        create_sequence(session, title="Second course", slug="second")
        seed = _seed(session)
        # Two in progress; a pending one and a finished one are not.
        statuses = [EnrollmentStatus.ACTIVE] * 2 + [
            EnrollmentStatus.PENDING,
            EnrollmentStatus.COMPLETED,
        ]
        for n, status in enumerate(statuses):
            subscriber = Subscriber(email=f"p{n}@example.org")
            session.add(Enrollment(subscriber=subscriber, sequence=seed, status=status))
    with db.session() as session:
        rows = {row.slug: row for row in sequence_rows(session)}
    assert rows["emotional-distance"].in_progress == 2
    assert rows["emotional-distance"].steps >= 2 and rows["emotional-distance"].is_default
    assert (rows["second"].steps, rows["second"].in_progress, rows["second"].is_default) == (
        0,
        0,
        False,
    )


@pytest.mark.parametrize(
    ("title", "slug", "field"),
    [
        ("", "ok", "title"),
        ("x" * 201, "ok", "title"),
        ("Fine", "Not A Slug", "slug"),
        ("Fine", "emotional-distance", "slug"),
    ],
)
def test_bad_new_sequences_are_refused_and_change_nothing(
    app: Flask, title: str, slug: str, field: str
) -> None:
    with pytest.raises(CatalogueError) as caught, db.transaction() as session:
        create_sequence(session, title=title, slug=slug)
    assert caught.value.field == field
    with db.session() as session:
        assert len(session.scalars(select(Sequence)).all()) == 1


def test_a_title_changes_and_says_what_it_was(app: Flask) -> None:
    with db.transaction() as session:
        assert retitle(session, _seed(session), "  New   title ") == (
            "Emotional Distance: Why It Happens and What Brings Closeness Back",
            "New title",
        )
    with db.transaction() as session:
        for bad in ("", "   ", "x" * 201):
            with pytest.raises(CatalogueError) as caught:
                retitle(session, _seed(session), bad)
            assert caught.value.field == "title"
    with db.session() as session:
        assert _seed(session).title == "New title"


def test_exactly_one_default(app: Flask) -> None:
    from newsletter.content.proposal import save_new
    from tests.test_proposal import seed_text

    with db.transaction() as session:
        save_new(session, seed_text(), slug="other")
        empty = create_sequence(session, title="Empty", slug="empty")
        with pytest.raises(CatalogueError, match="without parts"):
            make_default(session, empty)
        other = session.scalars(select(Sequence).where(Sequence.slug == "other")).one()
        assert make_default(session, other) == "emotional-distance"
    with db.session() as session:
        defaults = session.scalars(select(Sequence.slug).where(Sequence.is_default)).all()
    assert defaults == ["other"]


def test_a_new_sequence_is_a_draft_until_activated_with_parts(app: Flask) -> None:
    with db.transaction() as session:
        empty = create_sequence(session, title="Empty", slug="empty")
        assert empty.status.value == "draft"
        with pytest.raises(CatalogueError, match="Publish its parts first"):
            activate(session, empty)
        with pytest.raises(CatalogueError, match="already"):
            activate(session, _seed(session))
