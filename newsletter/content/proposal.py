"""The import preview: how an uploaded or pasted article would be split, before it is saved.

An editor sees each proposed part's subject and reading time, changes the number of parts and
looks again, then saves the article as a new sequence (`save_new`) or as the draft of an
existing one (`save_as_draft`), to be published with its dry run like any edit. Nothing here
writes until then, and both go through the same split as `flask import-article`
(content/sequences.py), so the rules of an import apply unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.content.article import WORDS_PER_MINUTE, ArticleError, Sidecar
from newsletter.content.sequences import (
    ImportReport,
    draft_parts,
    import_text,
    is_slug,
    split_text,
)
from newsletter.models import Sequence

# An article is read whole into memory and kept in the preview form between its steps, and a
# request may carry 64 KB (MAX_CONTENT_LENGTH); a long-form article is 10 to 50 KB.
MAX_ARTICLE_CHARS = 60_000
# One part a day for two months is already more than any reader follows.
MAX_PARTS = 60
# The sequences table's title column.
TITLE_MAX = 200


def reading_minutes(words: int) -> int:
    """Minutes to read `words` at WORDS_PER_MINUTE, rounded up (at least one)."""
    return max(1, math.ceil(words / WORDS_PER_MINUTE))


@dataclass(frozen=True)
class ProposedPart:
    """One mail the article would become."""

    number: int
    subject: str
    words: int
    links_without_url: int

    @property
    def minutes(self) -> int:
        """Its reading time in whole minutes, rounded up."""
        return reading_minutes(self.words)


@dataclass(frozen=True)
class Proposal:
    """The parts an article would be split into, and what the editor should look at."""

    title: str
    parts: list[ProposedPart]
    warnings: list[str]
    dropped: list[str]

    @property
    def minutes(self) -> int:
        """The whole article's reading time in minutes."""
        return reading_minutes(sum(part.words for part in self.parts))

    @property
    def links_without_url(self) -> int:
        """How many "Keep reading" links still need a URL."""
        return sum(part.links_without_url for part in self.parts)


def _checked(text: str, parts: int | None) -> str:
    if not text.strip():
        raise ArticleError("The article is empty: upload a file or paste its text.")
    if len(text) > MAX_ARTICLE_CHARS:
        raise ArticleError(f"The article is longer than {MAX_ARTICLE_CHARS:,} characters.")
    if parts is not None and not 1 <= parts <= MAX_PARTS:
        raise ArticleError(f"The number of parts must be from 1 to {MAX_PARTS}.")
    # Line ends as an upload from any system may have them; the splitter reads lines.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _sidecar(title: str | None) -> Sidecar:
    title = " ".join((title or "").split())
    if len(title) > TITLE_MAX:
        raise ArticleError(f"The title may have at most {TITLE_MAX} characters.")
    return Sidecar(title=title or None)


def propose(
    text: str, *, markdown: bool = False, parts: int | None = None, title: str | None = None
) -> Proposal:
    """The parts `text` would become (sized by reading time, or `parts` of them).

    Without a `title`, the article's own (its first heading or sentence) is proposed. Raises
    ArticleError, naming the problem, for an article that cannot be imported.
    """
    result = split_text(
        _checked(text, parts), markdown=markdown, parts=parts, sidecar=_sidecar(title)
    )
    return Proposal(
        title=result.title,
        parts=[
            ProposedPart(
                number=part.number,
                subject=part.subject,
                words=part.words,
                links_without_url=sum(1 for r in part.resources if not r.url),
            )
            for part in result.parts
        ],
        warnings=list(result.warnings),
        dropped=list(result.dropped_boilerplate),
    )


def save_new(
    session: Session,
    text: str,
    *,
    slug: str,
    markdown: bool = False,
    parts: int | None = None,
    title: str | None = None,
) -> ImportReport:
    """Save the article as a new sequence named `slug`, split as `propose` showed it.

    Raises ArticleError, before anything is written, for a bad article or a slug in use.
    """
    return import_text(
        session,
        _checked(text, parts),
        slug=slug,
        markdown=markdown,
        parts=parts,
        sidecar=_sidecar(title),
    )


def save_as_draft(
    session: Session,
    sequence: Sequence,
    text: str,
    *,
    markdown: bool = False,
    parts: int | None = None,
) -> int:
    """Make the article, split as `propose` showed it, the draft of `sequence`; its parts.

    Part N replaces the draft's step N (see `sequences.draft_parts`); nothing reaches a reader
    until the draft is published. Raises ArticleError, before anything is written, for a bad
    article.
    """
    result = split_text(_checked(text, parts), markdown=markdown, parts=parts, sidecar=Sidecar())
    draft_parts(session, sequence, result.parts)
    return len(result.parts)


def draft_targets(session: Session) -> list[tuple[int, str]]:
    """The sequences an article may become the draft of (any), as (id, title), by title."""
    rows = session.execute(
        select(Sequence.id, Sequence.title).order_by(Sequence.title, Sequence.id)
    )
    return [(sequence_id, title) for sequence_id, title in rows]


def slug_problem(session: Session, slug: str) -> str | None:
    """Why `slug` cannot name a new sequence, or None when it can."""
    if not is_slug(slug):
        return "Lower-case letters, digits and dashes, at most 100 characters (e.g. my-course)."
    if session.scalar(select(Sequence.id).where(Sequence.slug == slug)) is not None:
        return f"A sequence named {slug} exists already: choose another name."
    return None
