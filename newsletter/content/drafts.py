"""Drafts of a sequence: the version an editor changes before it reaches anyone.

An edit to a sequence is a draft (a `SequenceVersion` in state draft, holding a snapshot of
the steps in order and the send settings) until it is published (content/publishing.py).
`draft_of` opens one, copied from the newest published version; the edits (`update_step`,
`add_step`, `remove_step`, `move_step`, `update_settings`) change only that snapshot, run the
import's rules on every field (`checked_field`) before anything changes, and refuse with
`DraftError` naming the field at fault. `discard_draft` throws a draft away, and
`record_published` records a sequence's live steps as its next published version (after an
import).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.content.rules import body_problems, html_problems, is_safe_url
from newsletter.mail.compose import sample_bodies
from newsletter.mail.sandbox import MAX_SOURCE_CHARS, AdminTemplateError, AdminTemplates
from newsletter.models import Sequence, SequenceVersion, VersionState, new_step_key

# The fields of a step a version carries, in the snapshot and on the Step row.
STEP_FIELDS = (
    "subject",
    "preheader",
    "day_offset",
    "body_md",
    "teaser",
    "resources",
    "resources_intro",
)
# The send settings a version carries (columns of Sequence).
SETTINGS = ("send_hour", "send_end_hour", "send_days")

SUBJECT_MAX = 200
PREHEADER_MAX = 300
TEASER_MAX = 300
DAY_OFFSET_MAX = 365
RESOURCES_MAX = 20


class DraftError(ValueError):
    """An edit or a publish refused, naming the field at fault; nothing was changed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# -- versions and drafts -------------------------------------------------------------------------


def snapshot_of(sequence: Sequence) -> dict[str, Any]:
    """The snapshot of a sequence's live steps, in order, and its send settings."""
    return {
        "steps": [
            {"key": step.key, **{name: copy.deepcopy(getattr(step, name)) for name in STEP_FIELDS}}
            for step in sequence.steps
        ],
        "settings": {name: getattr(sequence, name) for name in SETTINGS},
    }


def published(session: Session, sequence: Sequence) -> SequenceVersion | None:
    """The newest published version of a sequence (what its live steps are), if any."""
    return session.scalars(
        select(SequenceVersion)
        .where(
            SequenceVersion.sequence_id == sequence.id,
            SequenceVersion.state == VersionState.PUBLISHED,
        )
        .order_by(SequenceVersion.number.desc())
        .limit(1)
    ).first()


def open_draft(session: Session, sequence: Sequence) -> SequenceVersion | None:
    """The sequence's draft, if one is open."""
    return session.scalars(
        select(SequenceVersion).where(
            SequenceVersion.sequence_id == sequence.id,
            SequenceVersion.state == VersionState.DRAFT,
        )
    ).first()


def record_published(
    session: Session, sequence: Sequence, actor_email: str | None, now: datetime | None = None
) -> SequenceVersion:
    """Record the sequence's live steps as its next published version (after an import)."""
    now = now or clock.now()
    session.flush()
    session.expire(sequence, ["steps"])
    version = SequenceVersion(
        sequence_id=sequence.id,
        number=_next_number(session, sequence),
        state=VersionState.PUBLISHED,
        snapshot=snapshot_of(sequence),
        created_at=now,
        published_at=now,
        published_by=actor_email,
    )
    session.add(version)
    session.flush()
    return version


def _next_number(session: Session, sequence: Sequence) -> int:
    highest = session.scalar(
        select(func.max(SequenceVersion.number)).where(SequenceVersion.sequence_id == sequence.id)
    )
    return int(highest or 0) + 1


def draft_of(session: Session, sequence: Sequence) -> SequenceVersion:
    """The sequence's open draft, or a new one copied from its published snapshot."""
    draft = open_draft(session, sequence)
    if draft is not None:
        return draft
    base = published(session, sequence)
    if base is None:
        # A sequence made before versions existed, or by hand: its live steps are version 1.
        base = record_published(session, sequence, None)
    draft = SequenceVersion(
        sequence_id=sequence.id,
        number=_next_number(session, sequence),
        state=VersionState.DRAFT,
        snapshot=copy.deepcopy(base.snapshot),
        created_at=clock.now(),
    )
    session.add(draft)
    session.flush()
    return draft


def draft_of_copy(session: Session, sequence: Sequence) -> SequenceVersion:
    """An unsaved draft equal to the live steps (the dry run of a publish that changes nothing)."""
    base = published(session, sequence)
    return SequenceVersion(
        sequence_id=sequence.id,
        number=_next_number(session, sequence),
        state=VersionState.DRAFT,
        snapshot=copy.deepcopy(base.snapshot) if base else snapshot_of(sequence),
    )


def discard_draft(session: Session, sequence: Sequence) -> None:
    """Throw the sequence's draft away (a draft was never live, so its row goes)."""
    draft = open_draft(session, sequence)
    if draft is not None:
        session.delete(draft)
        session.flush()


def draft_steps(draft: SequenceVersion) -> list[dict[str, Any]]:
    """A copy of the draft's steps, in order."""
    return copy.deepcopy(list(draft.snapshot.get("steps", [])))


def _save(draft: SequenceVersion, steps: list[dict[str, Any]]) -> None:
    # A new dict, so that the JSON column sees the change.
    draft.snapshot = {**draft.snapshot, "steps": steps}


def _editable(draft: SequenceVersion) -> None:
    if draft.state is not VersionState.DRAFT:
        raise DraftError("version", f"version {draft.number} is published and cannot change")


def _index_of(steps: list[dict[str, Any]], key: str) -> int:
    for index, step in enumerate(steps):
        if step["key"] == key:
            return index
    raise DraftError("key", f"the draft has no step {key!r}")


# -- the rules every edit runs (the same as import) --------------------------------------------


def _one_line(name: str, value: Any, limit: int, *, required: bool) -> str:
    if not isinstance(value, str):
        raise DraftError(name, "must be text")
    text = value.strip()
    if required and not text:
        raise DraftError(name, "must not be empty")
    if "\r" in text or "\n" in text:
        raise DraftError(name, "must be one line")
    if len(text) > limit:
        raise DraftError(name, f"must be at most {limit} characters (it has {len(text)})")
    return text


def _templated(templates: AdminTemplates, name: str, value: str) -> None:
    if "{" not in value:
        return
    try:
        templates.check(value)
    except AdminTemplateError as exc:
        raise DraftError(name, str(exc)) from None


def _body(templates: AdminTemplates, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DraftError("body_md", "must not be empty")
    if len(value) > MAX_SOURCE_CHARS:
        raise DraftError("body_md", f"must be at most {MAX_SOURCE_CHARS} characters")
    problems = body_problems(value)
    if problems:
        raise DraftError("body_md", "; ".join(problems))
    _templated(templates, "body_md", value)
    try:
        for label, html in sample_bodies(templates, value):
            problems = html_problems(html)
            if problems:
                raise DraftError(
                    "body_md", f"as sent to a subscriber with {label}: " + "; ".join(problems)
                )
    except AdminTemplateError as exc:
        raise DraftError("body_md", str(exc)) from None
    return value


def _resources(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or len(value) > RESOURCES_MAX:
        raise DraftError("resources", f"must be a list of at most {RESOURCES_MAX} links")
    checked: list[dict[str, str]] = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DraftError("resources", f"link {number} must have a title, blurb and url")
        title = _one_line("resources", item.get("title", ""), 200, required=True)
        blurb = item.get("blurb", "") or ""
        url = _one_line("resources", item.get("url", "") or "", 2000, required=False)
        if not isinstance(blurb, str) or len(blurb) > 1000:
            raise DraftError("resources", f"link {number}: the blurb must be short text")
        # An empty URL is allowed, as the import allows it: the editor warns (`warnings`).
        if url and not is_safe_url(url):
            raise DraftError("resources", f"link {number}: {url!r} must be an https:// URL")
        checked.append({"title": title, "blurb": blurb.strip(), "url": url})
    return checked


def checked_field(name: str, value: Any, templates: AdminTemplates | None = None) -> Any:
    """A step field's value as stored, or DraftError naming the field (the import's rules)."""
    templates = templates or AdminTemplates()
    if name == "subject":
        subject = _one_line(name, value, SUBJECT_MAX, required=True)
        _templated(templates, name, subject)
        return subject
    if name == "preheader":
        preheader = _one_line(name, value or "", PREHEADER_MAX, required=False)
        _templated(templates, name, preheader)
        return preheader
    if name == "day_offset":
        try:
            day = int(value)
        except (TypeError, ValueError):
            raise DraftError(name, "must be a whole number of days") from None
        if not 0 <= day <= DAY_OFFSET_MAX:
            raise DraftError(name, f"must be between 0 and {DAY_OFFSET_MAX}")
        return day
    if name == "body_md":
        return _body(templates, value)
    if name == "teaser":
        teaser = _one_line(name, value or "", TEASER_MAX, required=False)
        return teaser or None
    if name == "resources":
        return _resources(value)
    if name == "resources_intro":
        if value is not None and not isinstance(value, str):
            raise DraftError(name, "must be text")
        if value and len(value) > MAX_SOURCE_CHARS:
            raise DraftError(name, f"must be at most {MAX_SOURCE_CHARS} characters")
        if value and body_problems(value):
            raise DraftError(name, "; ".join(body_problems(value)))
        return value or None
    raise DraftError(name, "is not a field of a step")


# -- edits ---------------------------------------------------------------------------------------


def update_step(session: Session, draft: SequenceVersion, key: str, **fields: Any) -> None:
    """Change fields of one step of the draft; all are checked before any is changed."""
    _editable(draft)
    steps = draft_steps(draft)
    index = _index_of(steps, key)
    templates = AdminTemplates()
    checked = {name: checked_field(name, value, templates) for name, value in fields.items()}
    steps[index].update(checked)
    _save(draft, steps)
    session.flush()


def add_step(session: Session, draft: SequenceVersion, after_key: str | None) -> str:
    """Add a step after `after_key` (None: first); returns its key. It starts as a stub."""
    _editable(draft)
    steps = draft_steps(draft)
    index = _index_of(steps, after_key) + 1 if after_key is not None else 0
    before = steps[index - 1] if index > 0 else None
    key = new_step_key()
    steps.insert(
        index,
        {
            "key": key,
            "subject": "New part",
            "preheader": "",
            "day_offset": int(before["day_offset"]) + 1 if before else 0,
            "body_md": "Write this part here.",
            "teaser": None,
            "resources": [],
            "resources_intro": None,
        },
    )
    _save(draft, steps)
    session.flush()
    return key


def remove_step(session: Session, draft: SequenceVersion, key: str) -> None:
    """Take a step out of the draft (when published, its row stays, marked removed)."""
    _editable(draft)
    steps = draft_steps(draft)
    index = _index_of(steps, key)
    if len(steps) == 1:
        raise DraftError("steps", "a sequence needs at least one step")
    del steps[index]
    _save(draft, steps)
    session.flush()


def move_step(session: Session, draft: SequenceVersion, key: str, new_index: int) -> None:
    """Move a step of the draft to `new_index` (0 is first) in the order."""
    _editable(draft)
    steps = draft_steps(draft)
    if not 0 <= new_index < len(steps):
        raise DraftError("position", f"must be between 1 and {len(steps)}")
    steps.insert(new_index, steps.pop(_index_of(steps, key)))
    _save(draft, steps)
    session.flush()


def update_settings(session: Session, draft: SequenceVersion, **fields: Any) -> None:
    """Change the draft's send window (send_hour, send_end_hour, send_days), checked whole."""
    _editable(draft)
    settings = {**draft.snapshot.get("settings", {})}
    for name, value in fields.items():
        if name not in SETTINGS:
            raise DraftError(name, "is not a send setting")
        if name == "send_days":
            if not isinstance(value, str) or not value or set(value) - set("1234567"):
                raise DraftError(name, "must be weekday digits 1 (Monday) to 7 (Sunday)")
            settings[name] = "".join(sorted(set(value)))
            continue
        try:
            settings[name] = int(value)
        except (TypeError, ValueError):
            raise DraftError(name, "must be a whole hour") from None
    if not 0 <= settings["send_hour"] <= 23:
        raise DraftError("send_hour", "must be between 0 and 23")
    if not settings["send_hour"] < settings["send_end_hour"] <= 24:
        raise DraftError("send_end_hour", "must be after the send hour, at most 24")
    draft.snapshot = {**draft.snapshot, "settings": settings}
    session.flush()


def warnings(draft: SequenceVersion) -> list[str]:
    """What the editor should point out without refusing it: "Keep reading" links with no URL
    yet (they are shown without a target, as an import leaves them)."""
    return [
        f"step {number}: the link “{link.get('title')}” has no URL yet"
        for number, step in enumerate(draft.snapshot.get("steps", []), start=1)
        for link in step.get("resources") or []
        if not link.get("url")
    ]
