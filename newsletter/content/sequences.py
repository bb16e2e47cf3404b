"""Turning article files into sequences, and finding the sequence a signup belongs to."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.content import drafts, publishing
from newsletter.content.article import (
    ArticleError,
    Sidecar,
    SplitResult,
    load_sidecar,
    split_article,
)
from newsletter.content.rules import body_problems, html_problems
from newsletter.mail.compose import EMAILS_DIR, sample_bodies
from newsletter.mail.sandbox import AdminTemplateError, AdminTemplates
from newsletter.models import (
    Delivery,
    Sequence,
    SequenceStatus,
    SequenceVersion,
    Step,
    new_step_key,
)
from newsletter.schedule import REAL_DAY

log = logging.getLogger(__name__)

SEED_ARTICLE = EMAILS_DIR / "articles" / "emotional-distance.txt"
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass
class ImportReport:
    """What an import created, and what the operator should look at."""

    sequence: Sequence
    parts: int
    warnings: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def slugify(text: str, limit: int = 60) -> str:
    """A URL-safe slug from a name or a title ("article" when nothing of it is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower())[:limit].strip("-")
    return slug or "article"


def slug_for(path: Path) -> str:
    """A URL-safe slug from a file name."""
    return slugify(path.stem, limit=100)


def is_slug(text: str) -> bool:
    """True for lower-case letters, digits and single dashes, at most 100 characters."""
    return len(text) <= 100 and bool(_SLUG.match(text))


def _check_parts(parts: list[Any]) -> None:
    """Refuse, at import, any part the sender could not render or should not send.

    A template error, a link that is not https:// or mailto:, an image without alt text: in
    the source, and in the body as each sample subscriber would get it (sandbox.SAMPLES).
    """
    templates = AdminTemplates()
    for part in parts:
        problems = body_problems(part.body_md)
        if problems:
            raise ArticleError(f"part {part.number}: " + "; ".join(problems))
        for name in ("subject", "preheader", "body_md"):
            text = getattr(part, name) or ""
            if "{" not in text:
                continue
            try:
                templates.check(text)
            except AdminTemplateError as exc:
                raise ArticleError(f"part {part.number} {name}: {exc}") from None
        try:
            for label, html in sample_bodies(templates, part.body_md):
                problems = html_problems(html)
                if problems:
                    raise ArticleError(
                        f"part {part.number} body_md, as sent to a subscriber with {label}: "
                        + "; ".join(problems)
                    )
        except AdminTemplateError as exc:
            raise ArticleError(f"part {part.number} body_md: {exc}") from None


def import_article(
    session: Session,
    path: Path,
    *,
    slug: str | None = None,
    parts: int | None = None,
    replace: bool = False,
    publish: bool = False,
    actor_email: str | None = None,
    day_seconds: float = REAL_DAY,
) -> ImportReport:
    """Split the article at `path` into a new sequence (or replace an existing one's steps).

    The sidecar `<stem>.toml` beside it gives the title, description, link targets and
    optionally the number of parts. Raises ArticleError with a clear message on bad input,
    before anything is written. A sequence that has sent mail is changed only with `publish`:
    the article becomes a draft (part N over step N) and is published as a new version, which
    moves the people in progress forward (content/publishing.py); PublishBusy may be raised.
    """
    if not path.is_file():
        raise ArticleError(f"no article file at {path}")
    sidecar = load_sidecar(path.with_suffix(".toml"))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ArticleError(f"{path} is not UTF-8 text") from None
    return import_text(
        session,
        text,
        slug=slug or slug_for(path),
        markdown=path.suffix.lower() in (".md", ".markdown"),
        sidecar=sidecar,
        parts=parts,
        replace=replace,
        publish=publish,
        actor_email=actor_email,
        day_seconds=day_seconds,
        sidecar_name=path.with_suffix(".toml").name,
    )


def split_text(
    text: str,
    *,
    markdown: bool,
    sidecar: Sidecar | None = None,
    parts: int | None = None,
    sidecar_name: str = "the article's .toml sidecar",
) -> SplitResult:
    """An article's text split into checked parts; ArticleError names what is wrong."""
    sidecar = sidecar or Sidecar()
    result = split_article(
        text,
        markdown=markdown,
        title=sidecar.title,
        parts=parts or sidecar.parts,
        minutes_per_part=sidecar.minutes_per_part or 2.5,
        links=sidecar.links,
        sidecar_name=sidecar_name,
    )
    _check_parts(result.parts)
    return result


def import_text(
    session: Session,
    text: str,
    *,
    slug: str,
    markdown: bool = False,
    sidecar: Sidecar | None = None,
    parts: int | None = None,
    replace: bool = False,
    publish: bool = False,
    actor_email: str | None = None,
    day_seconds: float = REAL_DAY,
    sidecar_name: str = "the article's .toml sidecar",
) -> ImportReport:
    """An article's text as a new sequence named `slug` (or, with `replace`, its new steps).

    Raises ArticleError with a clear message on bad input, before anything is written; see
    `import_article` for `publish`.
    """
    if not _SLUG.match(slug):
        raise ArticleError(f"slug {slug!r} must be lower-case letters, digits and dashes")
    sidecar = sidecar or Sidecar()
    result = split_text(
        text, markdown=markdown, sidecar=sidecar, parts=parts, sidecar_name=sidecar_name
    )
    sequence = session.scalar(select(Sequence).where(Sequence.slug == slug))
    if sequence is not None and not replace:
        raise ArticleError(f"a sequence with slug {slug!r} exists; pass --replace to rebuild it")
    if sequence is None:
        has_any = session.scalar(select(func.count(Sequence.id))) or 0
        sequence = Sequence(slug=slug, title=result.title, is_default=has_any == 0)
        session.add(sequence)
    else:
        in_use = session.scalar(
            select(func.count(Delivery.id))
            .join(Step, Step.id == Delivery.step_id)
            .where(Step.sequence_id == sequence.id)
        )
        if in_use and not publish:
            # Rebuilding would orphan the history of mail already sent from these steps.
            raise ArticleError(
                f"sequence {slug!r} already has deliveries; pass --publish to publish the "
                "article as its next version (people in progress move forward), or import "
                "under a new --slug"
            )
        if in_use:
            _publish_parts(session, sequence, result.parts, actor_email, day_seconds)
            return ImportReport(
                sequence=sequence,
                parts=len(result.parts),
                warnings=list(result.warnings),
                dropped=list(result.dropped_boilerplate),
            )
        drafts.discard_draft(session, sequence)
        sequence.steps.clear()
        session.flush()
    sequence.title = result.title
    sequence.description = sidecar.description or ""
    for index, part in enumerate(result.parts):
        sequence.steps.append(
            Step(
                position=part.number,
                day_offset=index,
                subject=part.subject,
                preheader=part.preheader,
                body_md=part.body_md,
                teaser=part.teaser,
                resources=[
                    {"title": r.title, "blurb": r.blurb, "url": r.url} for r in part.resources
                ],
                resources_intro=part.resources_intro,
            )
        )
    session.flush()
    drafts.record_published(session, sequence, actor_email)
    for warning in result.warnings:
        log.warning("import %s: %s", slug, warning)
    return ImportReport(
        sequence=sequence,
        parts=len(result.parts),
        warnings=list(result.warnings),
        dropped=list(result.dropped_boilerplate),
    )


def _publish_parts(
    session: Session,
    sequence: Sequence,
    parts: list[Any],
    actor_email: str | None,
    day_seconds: float,
) -> None:
    """Publish the article's parts over a sequence in use: part N replaces step N."""
    draft_parts(session, sequence, parts)
    try:
        publishing.publish(session, sequence, actor_email, day_seconds=day_seconds)
    except drafts.DraftError as exc:
        raise ArticleError(str(exc)) from None


def draft_parts(session: Session, sequence: Sequence, parts: list[Any]) -> SequenceVersion:
    """Make an article's parts the steps of the sequence's draft (opened if none is); it.

    Part N takes the place of the draft's step N (its key, so that whoever waits on step N is
    offered part N when the draft is published); more parts become new steps after them,
    fewer leave the last steps out. The live steps change only when the draft is published,
    with its dry run.
    """
    draft = drafts.draft_of(session, sequence)
    keys = [step["key"] for step in drafts.draft_steps(draft)]
    steps = [
        {
            "key": keys[index] if index < len(keys) else new_step_key(),
            "subject": part.subject,
            "preheader": part.preheader,
            "day_offset": index,
            "body_md": part.body_md,
            "teaser": part.teaser,
            "resources": [
                {"title": r.title, "blurb": r.blurb, "url": r.url} for r in part.resources
            ],
            "resources_intro": part.resources_intro,
        }
        for index, part in enumerate(parts)
    ]
    draft.snapshot = {**draft.snapshot, "steps": steps}
    return draft


def sequence_for(session: Session, slug: str | None) -> Sequence | None:
    """The sequence named `slug`, or without one the default (else the oldest) sequence.

    A draft is not offered to signups; a paused sequence is (its first part waits).
    """
    query = select(Sequence).where(Sequence.status != SequenceStatus.DRAFT)
    if slug:
        query = query.where(Sequence.slug == slug)
    else:
        query = query.order_by(Sequence.is_default.desc(), Sequence.id)
    return session.scalars(query.limit(1)).first()


def ensure_seed(session: Session) -> ImportReport | None:
    """Import the shipped article when the database has no sequence yet."""
    if session.scalar(select(func.count(Sequence.id))):
        return None
    return import_article(session, SEED_ARTICLE)
