"""A step as the real mail, before it is published: the editor's preview and its field checks.

The preview is built by the same Composer as a sent part (layout, Markdown, sandbox, inlined
CSS), for one of the sandbox's sample subscribers, from a step that need not be stored: a
draft's snapshot entry, the fields of a form not yet saved, or a live Step. Whatever is wrong
with the text comes back per field, in the words an editor can act on, never as an exception:
the same rules as an import (content/rules.py, mail/sandbox.py), plus the header rules of the
subject and preheader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from newsletter.content.drafts import (
    DAY_OFFSET_MAX,
    PREHEADER_MAX,
    RESOURCES_MAX,
    SUBJECT_MAX,
    TEASER_MAX,
)
from newsletter.content.rules import body_problems, html_problems, is_safe_url
from newsletter.mail.compose import Addressee, Composer, sample_bodies
from newsletter.mail.mime import HeaderError, checked_header
from newsletter.mail.sandbox import (
    MAX_SOURCE_CHARS,
    SAMPLES,
    AdminTemplateError,
    AdminTemplates,
)
from newsletter.models import Sequence, Step

# The bounds a draft holds its fields to (content/drafts.py), so that what this module
# accepts a draft accepts too, and each error shows beside its field.
RESOURCE_TITLE_MAX = 200
RESOURCE_BLURB_MAX = 1000
RESOURCE_URL_MAX = 2000
MAX_RESOURCES = RESOURCES_MAX
_SCRIPT_LINK = re.compile(r"\]\(\s*<?\s*(javascript|vbscript|data|file)\s*:", re.IGNORECASE)
# A preview's personal links belong to nobody (as a test send's do): they find nothing.
NOBODY = 0


@dataclass(frozen=True)
class Resource:
    """One "Keep reading" link; `url` is "" while nobody has filled it in."""

    title: str
    blurb: str = ""
    url: str = ""

    def as_dict(self) -> dict[str, str]:
        """The form the snapshot and `Step.resources` keep it in."""
        return {"title": self.title, "blurb": self.blurb, "url": self.url}


@dataclass(frozen=True)
class StepFields:
    """What an editor can change in a step, however it is held."""

    subject: str
    body_md: str
    day_offset: int = 0
    preheader: str = ""
    teaser: str | None = None
    resources: tuple[Resource, ...] = ()
    resources_intro: str | None = None

    @classmethod
    def of(cls, step: Step | Mapping[str, Any]) -> StepFields:
        """The fields of a live Step or of a draft snapshot's step entry."""
        if isinstance(step, Step):
            values: Mapping[str, Any] = {
                name: getattr(step, name)
                for name in (
                    "subject",
                    "body_md",
                    "day_offset",
                    "preheader",
                    "teaser",
                    "resources",
                    "resources_intro",
                )
            }
        else:
            values = step
        return cls(
            subject=str(values.get("subject") or ""),
            body_md=str(values.get("body_md") or ""),
            day_offset=int(values.get("day_offset") or 0),
            preheader=str(values.get("preheader") or ""),
            teaser=values.get("teaser") or None,
            resources=tuple(
                Resource(
                    str(r.get("title") or ""), str(r.get("blurb") or ""), str(r.get("url") or "")
                )
                for r in values.get("resources") or ()
            ),
            resources_intro=values.get("resources_intro") or None,
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields as a snapshot entry holds them (without its key)."""
        return {
            "subject": self.subject,
            "preheader": self.preheader,
            "day_offset": self.day_offset,
            "body_md": self.body_md,
            "teaser": self.teaser,
            "resources": [r.as_dict() for r in self.resources],
            "resources_intro": self.resources_intro,
        }

    def as_step(self, position: int) -> Step:
        """A Step row that is never stored, for the Composer; its id finds nobody's archive."""
        return Step(
            id=NOBODY,
            position=position,
            day_offset=self.day_offset,
            subject=self.subject,
            preheader=self.preheader,
            body_md=self.body_md,
            teaser=self.teaser,
            resources=[r.as_dict() for r in self.resources],
            resources_intro=self.resources_intro,
        )


Errors = dict[str, list[str]]


def _add(errors: Errors, name: str, message: str) -> None:
    errors.setdefault(name, []).append(message)


def _header_text(errors: Errors, name: str, label: str, value: str, limit: int) -> None:
    """A subject or preheader: one line, bounded, and a template the sandbox accepts."""
    try:
        checked_header(label, value)
    except HeaderError:
        _add(errors, name, f"The {label.lower()} must be one line: remove the line break.")
    if len(value) > limit:
        _add(errors, name, f"At most {limit} characters (this has {len(value)}).")
    if "{" in value:
        try:
            AdminTemplates().check(value)
        except AdminTemplateError as exc:
            _add(errors, name, str(exc))


def _body(errors: Errors, body: str) -> None:
    """The body: bounded, safe links and described images, in the source and as each sample
    subscriber would get it."""
    if not body.strip():
        _add(errors, "body_md", "The body is empty.")
        return
    if len(body) > MAX_SOURCE_CHARS:
        _add(errors, "body_md", f"At most {MAX_SOURCE_CHARS:,} characters ({len(body):,}).")
        return
    for problem in body_problems(body):
        _add(errors, "body_md", problem)
    # Markdown leaves a link to a script or data URL as plain text; the editor should know.
    for match in _SCRIPT_LINK.finditer(body):
        _add(errors, "body_md", f"A link to {match.group(1)}: is not allowed: use https://.")
    try:
        for label, html in sample_bodies(AdminTemplates(), body):
            problems = html_problems(html)
            if problems:
                _add(errors, "body_md", f"As sent to a subscriber with {label}: {problems[0]}")
                break
    except AdminTemplateError as exc:
        _add(errors, "body_md", str(exc))


def _resources(errors: Errors, resources: tuple[Resource, ...]) -> None:
    if len(resources) > MAX_RESOURCES:
        _add(errors, "resources", f"At most {MAX_RESOURCES} links.")
    for index, resource in enumerate(resources):
        prefix = f"resources-{index}"
        if not resource.title.strip():
            _add(errors, f"{prefix}-title", "A link needs a title (the text a reader clicks).")
        elif len(resource.title) > RESOURCE_TITLE_MAX:
            _add(errors, f"{prefix}-title", f"At most {RESOURCE_TITLE_MAX} characters.")
        if len(resource.blurb) > RESOURCE_BLURB_MAX:
            _add(errors, f"{prefix}-blurb", f"At most {RESOURCE_BLURB_MAX} characters.")
        if len(resource.url) > RESOURCE_URL_MAX:
            _add(errors, f"{prefix}-url", f"At most {RESOURCE_URL_MAX} characters.")
        elif resource.url and not is_safe_url(resource.url):
            _add(errors, f"{prefix}-url", "The URL must start with https:// (or be a mailto:).")


def field_errors(fields: StepFields) -> Errors:
    """What is wrong with each field, keyed by the editor form's field names; empty when the
    step may be saved. An empty "Keep reading" URL is not an error here (see `warnings`)."""
    errors: Errors = {}
    _header_text(errors, "subject", "Subject", fields.subject, SUBJECT_MAX)
    if not fields.subject.strip():
        _add(errors, "subject", "The subject is empty.")
    _header_text(errors, "preheader", "Preheader", fields.preheader, PREHEADER_MAX)
    if not 0 <= fields.day_offset <= DAY_OFFSET_MAX:
        _add(errors, "day_offset", f"A day from 0 to {DAY_OFFSET_MAX}.")
    if fields.teaser is not None and len(fields.teaser) > TEASER_MAX:
        _add(errors, "teaser", f"At most {TEASER_MAX} characters.")
    _body(errors, fields.body_md)
    _resources(errors, fields.resources)
    return errors


def warnings(fields: StepFields) -> list[str]:
    """What may be saved but must not be published: "Keep reading" links without a URL."""
    return [
        f"The link “{r.title or f'number {i + 1}'}” has no URL yet: fill it in before publishing."
        for i, r in enumerate(fields.resources)
        if not r.url.strip()
    ]


@dataclass(frozen=True)
class Preview:
    """The mail a sample subscriber would get, or why it cannot be built."""

    sample: str
    subject: str = ""
    html: str = ""
    text: str = ""
    errors: Errors = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the mail was built (warnings allowed)."""
        return not self.errors


def sample_labels() -> list[str]:
    """The sample subscribers a preview can be built for, by index."""
    return [label for label, _ in SAMPLES]


def preview_step(
    composer: Composer,
    sequence: Sequence,
    fields: StepFields,
    *,
    position: int,
    total: int,
    sample: int = 0,
) -> Preview:
    """Step `position` of `total` as the real mail for sample subscriber `sample`.

    Field errors come back in `errors` and nothing is rendered; an error only rendering can
    find (a name the text cannot take) comes back under the field "body_md".
    """
    label, name = SAMPLES[sample if 0 <= sample < len(SAMPLES) else 0]
    errors = field_errors(fields)
    notes = warnings(fields)
    if errors:
        return Preview(label, errors=errors, warnings=notes)
    recipient = Addressee(NOBODY, "preview@example.invalid", name or None)
    try:
        rendered = composer.step(recipient, fields.as_step(position), sequence, total, cache=False)
    except AdminTemplateError as exc:
        return Preview(label, errors={"body_md": [str(exc)]}, warnings=notes)
    return Preview(label, rendered.subject, rendered.html, rendered.text, warnings=notes)
