"""The import preview (content/proposal.py): proposed parts, reading times, saving."""

from __future__ import annotations

import math

import pytest
from flask import Flask
from sqlalchemy import func, select

from newsletter.content.article import ArticleError
from newsletter.content.proposal import (
    MAX_ARTICLE_CHARS,
    MAX_PARTS,
    propose,
    reading_minutes,
    save_new,
    slug_problem,
)
from newsletter.db import db
from newsletter.models import Sequence, Step
from tests.helpers.env import ROOT

# A byte copy of the shared seed (tests/test_article.py checks that it is).
SEED = ROOT / "emails" / "articles" / "emotional-distance.txt"


def seed_text() -> str:
    return SEED.read_text(encoding="utf-8")


@pytest.mark.parametrize(("words", "minutes"), [(0, 1), (1, 1), (230, 1), (231, 2), (690, 3)])
def test_reading_time_is_words_over_230_rounded_up(words: int, minutes: int) -> None:
    assert reading_minutes(words) == minutes


def test_the_seed_is_proposed_in_parts_with_subjects_and_reading_times() -> None:
    proposal = propose(seed_text())
    # Without a sidecar, the title is the article's first sentence until the editor names it.
    assert proposal.title == "Emotional distance rarely comes out of nowhere."
    assert propose(seed_text(), title="  Closeness   again ").title == "Closeness again"
    assert len(proposal.parts) >= 2
    for part in proposal.parts:
        assert part.subject
        assert part.minutes == math.ceil(part.words / 230)
    # The shipped article's links were lost: the last part's "Keep reading" URLs are empty.
    assert proposal.parts[-1].links_without_url == proposal.links_without_url > 0
    assert any("has no URL" in warning for warning in proposal.warnings)


def test_the_number_of_parts_can_be_chosen() -> None:
    two = propose(seed_text(), parts=2)
    three = propose(seed_text(), parts=3)
    assert [p.number for p in two.parts] == [1, 2]
    assert [p.number for p in three.parts] == [1, 2, 3]
    assert sum(p.words for p in two.parts) == sum(p.words for p in three.parts)


def test_windows_line_ends_split_the_same() -> None:
    assert propose(seed_text().replace("\n", "\r\n")) == propose(seed_text())


@pytest.mark.parametrize(
    ("text", "parts", "words"),
    [
        ("   \n", None, "empty"),
        ("x" * (MAX_ARTICLE_CHARS + 1), None, "longer than"),
        ("Some text.", 0, "from 1"),
        ("Some text.", MAX_PARTS + 1, "from 1"),
        ("Some text.", None, "title"),
        ("Intro.\n\nA link to [x](http://e.org) here.", None, "https://"),
    ],
)
def test_an_unusable_article_is_refused_with_the_reason(
    text: str, parts: int | None, words: str
) -> None:
    title = "t" * 201 if words == "title" else None
    with pytest.raises(ArticleError, match=words):
        propose(text, markdown=True, parts=parts, title=title)


def test_saving_makes_the_sequence_that_was_proposed(app: Flask) -> None:
    proposal = propose(seed_text(), parts=3, title="Closeness")
    with db.transaction() as session:
        assert slug_problem(session, "my-course") is None
        report = save_new(session, seed_text(), slug="my-course", parts=3, title="Closeness")
        assert report.parts == 3
    with db.session() as session:
        sequence = session.scalars(select(Sequence).where(Sequence.slug == "my-course")).one()
        assert [s.subject for s in sequence.steps] == [p.subject for p in proposal.parts]
        assert [s.day_offset for s in sequence.steps] == [0, 1, 2]
        assert sequence.title == "Closeness"
        # The seed sequence exists already, so the new one is not the signup page's default.
        assert not sequence.is_default
        assert [r["url"] for r in sequence.steps[-1].resources] == [""] * len(
            sequence.steps[-1].resources
        )


def test_a_taken_or_malformed_slug_is_refused_and_changes_nothing(app: Flask) -> None:
    with db.session() as session:
        taken = session.scalars(select(Sequence.slug)).one()
        before = session.scalar(select(func.count(Step.id)))
        assert "exists already" in (slug_problem(session, taken) or "")
        for bad in ("My Course", "a--b", "-a", "x" * 101, "<script>", ""):
            assert "Lower-case" in (slug_problem(session, bad) or ""), bad
    with pytest.raises(ArticleError, match="exists"), db.transaction() as session:
        save_new(session, seed_text(), slug=taken)
    with db.session() as session:
        assert session.scalar(select(func.count(Step.id))) == before
        assert session.scalar(select(func.count(Sequence.id))) == 1
