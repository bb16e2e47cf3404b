"""Live edits that cannot hurt anyone: drafts, the dry run, and publishing a version.

An edit to a sequence is a draft (a `SequenceVersion` in state draft, holding a snapshot of
the steps in order and the send settings) until it is published. `plan` is the dry run of a
publish, computed from the real enrollments and deliveries without writing anything;
`publish` applies the draft to the live steps and moves every open enrollment by Kit's rule:

    people only move forward. A person's place is the furthest, in the NEW order, of the
    steps they have had (sent, failed, skipped or being sent); their next part is the first
    live step after that place which they have not had.

Their waiting delivery is re-pointed in place to that step (keeping its due time, so nobody
gets two parts in a day), or skipped with the reason and the enrollment completed when nothing
is left. No delivery is ever deleted and no step row either: a removed step keeps its row
(`removed_at`, a position out of the live numbering), so history and results still point at it.

`plan` and `publish` share one computation (`_placements`), so a publish does exactly what
its dry run said, checked again inside the publishing transaction.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.content.rules import body_problems, html_problems, is_safe_url
from newsletter.delivery import planning
from newsletter.mail.compose import sample_bodies
from newsletter.mail.sandbox import MAX_SOURCE_CHARS, AdminTemplateError, AdminTemplates
from newsletter.models import (
    OPEN_ENROLLMENT_STATUSES,
    WAITING_STATES,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    Sequence,
    SequenceVersion,
    Step,
    Subscriber,
    VersionState,
    new_step_key,
)
from newsletter.schedule import MIN_GAP_DAYS, REAL_DAY, SendWindow, step_due_at

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

# A delivery not yet sent, that a publish may point at another step: waiting, or held while
# its sequence or its person is paused (it stays held).
UNSENT_STATES = WAITING_STATES | {DeliveryState.HELD}
# The enrollments a publish moves: on their way, paused ones included.
IN_PROGRESS = (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED)

# Delivery states that mean the enrollment has had the step (Kit's rule counts them).
HAD_STATES = frozenset(
    {DeliveryState.SENT, DeliveryState.FAILED, DeliveryState.SKIPPED, DeliveryState.CLAIMED}
)


class DraftError(ValueError):
    """An edit or a publish refused, naming the field at fault; nothing was changed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PublishBusy(RuntimeError):
    """Mails of the sequence are being sent right now: a publish must wait for them."""

    def __init__(self, claimed: int) -> None:
        mails = "1 mail" if claimed == 1 else f"{claimed} mails"
        verb = "is" if claimed == 1 else "are"
        super().__init__(
            f"{mails} of this sequence {verb} being sent right now; publish again in a minute"
        )
        self.claimed = claimed


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


def _check_whole(steps: list[dict[str, Any]]) -> None:
    """What a publish needs beyond each field: the days in order."""
    for number, step in enumerate(steps, start=1):
        if number > 1 and int(step["day_offset"]) < int(steps[number - 2]["day_offset"]):
            raise DraftError(
                "day_offset",
                f"step {number} is on day {step['day_offset']}, before step {number - 1} "
                f"(day {steps[number - 2]['day_offset']})",
            )


# -- the dry run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where one open enrollment goes when the draft is published."""

    enrollment_id: int
    subscriber_id: int
    place: float  # the furthest rank, in the new order, of the steps it has had
    waiting_id: int | None  # its waiting delivery
    waiting_key: str | None  # the step that delivery is for
    waiting_behind: bool  # that step now lies at or before their place
    target_key: str | None  # its next part after the publish; None: nothing is left
    due_at: datetime | None  # when that next part is due
    last_sent_at: datetime | None
    had: frozenset[str]

    @property
    def changes(self) -> bool:
        """The publish changes this enrollment's next part."""
        return self.target_key != self.waiting_key


@dataclass
class PublishPlan:
    """The dry run of publishing a draft: who goes where, and the promises checked on it."""

    version: int
    new_order: list[str]  # step keys, in the draft's order
    subjects: dict[str, str]  # step key -> subject in the draft
    added: dict[str, int]  # key of each new step -> its number in the new order
    removed: dict[str, tuple[int, str]]  # key of each removed step -> (old number, subject)
    in_progress: int
    not_started: int
    finished: int
    stuck: int  # active, with no waiting part (a reorder stalled them before the fix)
    placements: list[Placement] = field(default_factory=list)
    two_in_a_day: int = 0
    already_had: int = 0
    backwards: int = 0
    busy: int = 0
    max_delivery_id: int = 0

    def number_of(self, key: str | None) -> int | None:
        """The number (1..n) of a step in the new order."""
        if key is None or key not in self.new_order:
            return None
        return self.new_order.index(key) + 1

    def next_part(self) -> Counter[str]:
        """How many will get each new step as their next part, by key."""
        return Counter(
            p.target_key for p in self.placements if p.target_key in self.added and p.changes
        )

    def leaving_removed(self) -> dict[str, Counter[int | None]]:
        """For each removed step: how many waited on it, by the number of their next step."""
        moves: dict[str, Counter[int | None]] = {key: Counter() for key in self.removed}
        for p in self.placements:
            if p.waiting_key in self.removed:
                moves[p.waiting_key][self.number_of(p.target_key)] += 1
        return moves

    def step_name(self, key: str | None) -> str:
        """'step 3 (“Subject”)', in the new order."""
        return f"step {self.number_of(key)} (“{self.subjects.get(key or '', '')}”)"

    def moved_forward(self) -> Counter[tuple[int | None, int | None, bool]]:
        """Those whose waiting step stays but who get another one next, by (from, to, whether
        the step they waited on now lies behind their place)."""
        return Counter(
            (self.number_of(p.waiting_key), self.number_of(p.target_key), p.waiting_behind)
            for p in self.placements
            if p.changes
            and p.waiting_key is not None
            and p.waiting_key not in self.removed
            and p.target_key not in self.added
        )

    @property
    def safe(self) -> bool:
        """The promises hold: no part twice, none twice in a day, nobody moves backwards."""
        return not (self.two_in_a_day or self.already_had or self.backwards)

    def sentences(self) -> Iterator[str]:
        """The dry run in the admin's words, one sentence each."""
        yield f"{_people(self.in_progress)} {_are(self.in_progress)} in progress"
        if self.not_started:
            yield (
                f"{_people(self.not_started)} {_have(self.not_started)} not confirmed yet "
                "and will start on the new version"
            )
        next_part = self.next_part()
        for key, number in sorted(self.added.items(), key=lambda item: item[1]):
            count = next_part.get(key, 0)
            yield f"{_count(count)} will get the new step {number} as their next part"
        for key, moves in self.leaving_removed().items():
            old, subject = self.removed[key]
            if not moves:
                yield f"nobody is waiting on the step you removed (step {old}, “{subject}”)"
            for target, count in sorted(moves.items(), key=lambda m: m[0] or 10**9):
                one = count == 1
                where = (
                    f"{'moves' if one else 'move'} on to "
                    f"{self.step_name(self.new_order[target - 1])}"
                    if target
                    else f"{'finishes' if one else 'finish'} (nothing is left)"
                )
                yield (
                    f"{_count(count)} {_are(count)} waiting on the step you removed "
                    f"(step {old}, “{subject}”) and {where}"
                )
        for (before, after, behind), count in sorted(
            self.moved_forward().items(), key=lambda m: (m[0][0] or 0, m[0][1] or 10**9)
        ):
            one = count == 1
            if not behind:
                yield (
                    f"{_count(count)} waiting on step {before} {'gets' if one else 'get'} "
                    f"step {after} first, which now comes before it"
                )
                continue
            where = f"step {after}" if after else "the end (nothing is left)"
            yield (
                f"{_count(count)} waiting on step {before}, which now comes before "
                f"where they are, {'moves' if one else 'move'} on to {where}"
            )
        if self.stuck:
            yield f"{_count(self.stuck)} who had no next part will get one"
        if self.busy:
            yield str(PublishBusy(self.busy))
        if self.finished:
            gets = "gets" if self.finished == 1 else "get"
            have = _have(self.finished)
            yield f"{_people(self.finished)} {have} finished and {gets} nothing more"
        yield ", ".join(self._promises())

    def _promises(self) -> Iterator[str]:
        if self.two_in_a_day:
            yield f"{_people(self.two_in_a_day)} would get two parts in one day"
        else:
            yield "nobody gets two parts in one day"
        if self.already_had:
            yield f"{_people(self.already_had)} would get a part they already had"
        else:
            yield "nobody gets a part they already had"
        if self.backwards:
            yield f"{_people(self.backwards)} would move backwards"
        else:
            yield "nobody moves backwards"

    def summary(self) -> dict[str, Any]:
        """The plan's numbers, as kept on the published version."""
        return {
            "in_progress": self.in_progress,
            "not_started": self.not_started,
            "finished": self.finished,
            "stuck": self.stuck,
            "added": {str(n): self.next_part().get(k, 0) for k, n in self.added.items()},
            "removed": {
                str(self.removed[k][0]): {str(t): c for t, c in moves.items()}
                for k, moves in self.leaving_removed().items()
            },
            "moved": sum(1 for p in self.placements if p.changes),
            "two_in_a_day": self.two_in_a_day,
            "already_had": self.already_had,
            "backwards": self.backwards,
            "sentences": list(self.sentences()),
        }


def _people(count: int) -> str:
    return "nobody" if count == 0 else "1 person" if count == 1 else f"{count} people"


def _count(count: int) -> str:
    return "nobody" if count == 0 else str(count)


def _are(count: int) -> str:
    return "is" if count <= 1 else "are"


def _have(count: int) -> str:
    return "has" if count <= 1 else "have"


def plan(
    session: Session,
    sequence: Sequence,
    *,
    now: datetime | None = None,
    day_seconds: float = REAL_DAY,
) -> PublishPlan:
    """The dry run of publishing the sequence's draft (or of its published version): no writes."""
    draft = open_draft(session, sequence) or draft_of_copy(session, sequence)
    return _placements(session, sequence, draft, now or clock.now(), day_seconds)


def draft_of_copy(session: Session, sequence: Sequence) -> SequenceVersion:
    """An unsaved draft equal to the live steps (the dry run of a publish that changes nothing)."""
    base = published(session, sequence)
    return SequenceVersion(
        sequence_id=sequence.id,
        number=_next_number(session, sequence),
        state=VersionState.DRAFT,
        snapshot=copy.deepcopy(base.snapshot) if base else snapshot_of(sequence),
    )


def _ranks(session: Session, sequence: Sequence, order: list[str]) -> dict[str, float]:
    """Each step's rank in the new order; a removed step ranks just after the nearest live
    step that came before it in the newest version that had it (0.5: before them all)."""
    index = {key: float(number) for number, key in enumerate(order, start=1)}
    ranks = dict(index)
    histories = [
        [step["key"] for step in version.snapshot.get("steps", [])]
        for version in session.scalars(
            select(SequenceVersion)
            .where(
                SequenceVersion.sequence_id == sequence.id,
                SequenceVersion.state == VersionState.PUBLISHED,
            )
            .order_by(SequenceVersion.number.desc())
        )
    ]
    histories.insert(0, [step.key for step in sequence.steps])
    for key in session.scalars(select(Step.key).where(Step.sequence_id == sequence.id)):
        if key in ranks:
            continue
        ranks[key] = 0.5
        for keys in histories:
            if key in keys:
                before = [k for k in keys[: keys.index(key)] if k in index]
                ranks[key] = index[before[-1]] + 0.5 if before else 0.5
                break
    return ranks


def _placements(
    session: Session,
    sequence: Sequence,
    draft: SequenceVersion,
    now: datetime,
    day_seconds: float,
) -> PublishPlan:
    new_steps = list(draft.snapshot.get("steps", []))
    order = [step["key"] for step in new_steps]
    days = {step["key"]: int(step["day_offset"]) for step in new_steps}
    live = list(sequence.steps)
    live_keys = {step.key for step in live}
    all_steps = {
        step_id: key
        for step_id, key in session.execute(
            select(Step.id, Step.key).where(Step.sequence_id == sequence.id)
        )
        .tuples()
        .all()
    }
    ranks = _ranks(session, sequence, order)
    settings = {**{n: getattr(sequence, n) for n in SETTINGS}, **draft.snapshot.get("settings", {})}
    window = SendWindow(
        settings["send_hour"],
        settings["send_end_hour"],
        SendWindow.parse_days(settings["send_days"]),
    )
    result = PublishPlan(
        version=draft.number,
        new_order=order,
        subjects={step["key"]: str(step["subject"]) for step in new_steps},
        added={key: order.index(key) + 1 for key in order if key not in live_keys},
        removed={
            step.key: (number, step.subject)
            for number, step in enumerate(live, start=1)
            if step.key not in order
        },
        in_progress=0,
        not_started=0,
        finished=0,
        stuck=0,
    )
    counts = dict(
        session.execute(
            select(Enrollment.status, func.count())
            .where(Enrollment.sequence_id == sequence.id)
            .group_by(Enrollment.status)
        )
        .tuples()
        .all()
    )
    result.in_progress = int(counts.get(EnrollmentStatus.ACTIVE, 0)) + int(
        counts.get(EnrollmentStatus.PAUSED, 0)
    )
    result.not_started = int(counts.get(EnrollmentStatus.PENDING, 0))
    result.finished = int(counts.get(EnrollmentStatus.COMPLETED, 0))
    enrollments = session.execute(
        select(Enrollment.id, Enrollment.subscriber_id, Enrollment.started_at, Subscriber.time_zone)
        .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
        .where(Enrollment.sequence_id == sequence.id, Enrollment.status.in_(IN_PROGRESS))
        .order_by(Enrollment.id)
    ).all()
    rows: dict[int, list[Any]] = {}
    for row in session.execute(
        select(
            Delivery.id,
            Delivery.enrollment_id,
            Delivery.step_id,
            Delivery.state,
            Delivery.due_at,
            Delivery.sent_at,
        )
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .where(
            Enrollment.sequence_id == sequence.id,
            Enrollment.status.in_(IN_PROGRESS),
            Delivery.kind == DeliveryKind.STEP,
        )
        .order_by(Delivery.id)
    ):
        rows.setdefault(row.enrollment_id, []).append(row)
        result.max_delivery_id = max(result.max_delivery_id, row.id)
    gap = timedelta(seconds=MIN_GAP_DAYS * day_seconds)
    for enrollment in enrollments:
        mine = rows.get(enrollment.id, [])
        claimed = sum(1 for r in mine if r.state == DeliveryState.CLAIMED)
        if claimed:
            # Being sent: the worker schedules what follows. A publish waits for it
            # (PublishBusy) and is then planned again, with the part recorded as had.
            result.busy += claimed
            continue
        had = frozenset(all_steps[r.step_id] for r in mine if r.state in HAD_STATES)
        taken = {all_steps[r.step_id] for r in mine}
        waiting = next((r for r in mine if r.state in UNSENT_STATES), None)
        waiting_key = all_steps[waiting.step_id] if waiting is not None else None
        place = max((ranks[key] for key in had), default=0.0)
        target = next(
            (
                key
                for key in order
                if ranks[key] > place and (key not in taken or key == waiting_key)
            ),
            None,
        )
        sent_times = [r.sent_at for r in mine if r.sent_at is not None]
        last_sent = max(sent_times) if sent_times else None
        if waiting is not None:
            due: datetime | None = waiting.due_at
        elif target is not None:
            result.stuck += 1
            due = step_due_at(
                started_at=enrollment.started_at or now,
                day_offset=days[target],
                time_zone=enrollment.time_zone,
                window=window,
                day_seconds=day_seconds,
                previous_sent_at=last_sent,
            )
        else:
            due = None
        placement = Placement(
            enrollment_id=enrollment.id,
            subscriber_id=enrollment.subscriber_id,
            place=place,
            waiting_id=waiting.id if waiting is not None else None,
            waiting_key=waiting_key,
            waiting_behind=waiting_key is not None and ranks[waiting_key] <= place,
            target_key=target,
            due_at=due,
            last_sent_at=last_sent,
            had=had,
        )
        result.placements.append(placement)
        if target is None:
            continue
        # The promises, checked on the plan itself rather than assumed from the rule.
        if target in had:
            result.already_had += 1
        if ranks[target] <= place:
            result.backwards += 1
        if placement.changes and due is not None and last_sent is not None:
            if due < last_sent + gap:
                result.two_in_a_day += 1
    return result


# -- publishing ----------------------------------------------------------------------------------


def _lock(session: Session, sequence: Sequence) -> None:
    """Hold the sequence, its open enrollments and waiting deliveries till commit (PostgreSQL).

    Claims take waiting rows with FOR UPDATE SKIP LOCKED, so they pass these by meanwhile; a
    confirmation waits on the sequence row (planning.start_enrollment). On SQLite the write
    transaction (BEGIN IMMEDIATE) already serialises everything.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(select(Sequence.id).where(Sequence.id == sequence.id).with_for_update())
    # Enrollments before deliveries, the order an unsubscribe takes them in (stop the
    # enrollments, then skip the rows): the other order could deadlock with it.
    session.execute(
        select(Enrollment.id)
        .where(
            Enrollment.sequence_id == sequence.id,
            Enrollment.status.in_([EnrollmentStatus.PENDING, EnrollmentStatus.ACTIVE]),
        )
        .order_by(Enrollment.id)
        .with_for_update()
    )
    session.execute(
        select(Delivery.id)
        .join(Step, Step.id == Delivery.step_id)
        .where(Step.sequence_id == sequence.id, Delivery.state.in_(UNSENT_STATES))
        .with_for_update(of=Delivery)
    )


def _claimed(session: Session, sequence: Sequence) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .join(Step, Step.id == Delivery.step_id)
            .where(Step.sequence_id == sequence.id, Delivery.state == DeliveryState.CLAIMED)
        )
        or 0
    )


def _newest_delivery(session: Session, sequence: Sequence) -> int:
    return int(
        session.scalar(
            select(func.max(Delivery.id))
            .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
            .where(
                Enrollment.sequence_id == sequence.id,
                Enrollment.status.in_(IN_PROGRESS),
                Delivery.kind == DeliveryKind.STEP,
            )
        )
        or 0
    )


def _apply_steps(
    session: Session, sequence: Sequence, draft: SequenceVersion, now: datetime
) -> dict[str, Step]:
    """Make the live steps what the draft says; the steps by key (removed ones too)."""
    # Every row out of the live numbering first, so renumbering never meets itself in the
    # unique (sequence_id, position).
    session.execute(
        update(Step)
        .where(Step.sequence_id == sequence.id)
        .values(position=-Step.id)
        .execution_options(synchronize_session=False)
    )
    session.expire_all()
    by_key = {
        step.key: step
        for step in session.scalars(select(Step).where(Step.sequence_id == sequence.id))
    }
    wanted = list(draft.snapshot.get("steps", []))
    for number, values in enumerate(wanted, start=1):
        step = by_key.get(values["key"])
        if step is None:
            step = Step(sequence_id=sequence.id, key=values["key"])
            session.add(step)
            by_key[step.key] = step
        step.position = number
        step.removed_at = None
        for name in STEP_FIELDS:
            if getattr(step, name) != values[name]:
                setattr(step, name, copy.deepcopy(values[name]))
    keys = {values["key"] for values in wanted}
    for key, step in by_key.items():
        if key not in keys and step.removed_at is None:
            step.removed_at = now
    for name, value in draft.snapshot.get("settings", {}).items():
        if name in SETTINGS:
            setattr(sequence, name, value)
    session.flush()
    session.expire(sequence, ["steps"])
    return by_key


def publish(
    session: Session,
    sequence: Sequence,
    actor_email: str | None,
    *,
    now: datetime | None = None,
    day_seconds: float = REAL_DAY,
) -> SequenceVersion:
    """Apply the sequence's draft to its live steps and move every open enrollment forward.

    Raises DraftError when there is no draft or it breaks a rule, PublishBusy while mails of
    the sequence are being sent. Runs in the caller's transaction: all of it or none.
    """
    now = now or clock.now()
    draft = open_draft(session, sequence)
    if draft is None:
        raise DraftError("version", "there is no draft to publish")
    steps = list(draft.snapshot.get("steps", []))
    if not steps:
        raise DraftError("steps", "a sequence needs at least one step")
    templates = AdminTemplates()
    for number, values in enumerate(steps, start=1):
        for name in STEP_FIELDS:
            try:
                checked_field(name, values[name], templates)
            except DraftError as exc:
                raise DraftError(name, f"step {number}: {exc.message}") from None
    _check_whole(steps)
    _lock(session, sequence)
    busy = _claimed(session, sequence)
    if busy:
        raise PublishBusy(busy)
    the_plan = _placements(session, sequence, draft, now, day_seconds)
    if not the_plan.safe:
        # The rule makes this impossible; a plan that says otherwise is a bug, not a publish.
        raise DraftError("version", "; ".join(the_plan._promises()))
    session.flush()
    by_key = _apply_steps(session, sequence, draft, now)
    session.execute(
        update(Enrollment)
        .where(
            Enrollment.sequence_id == sequence.id,
            Enrollment.status.in_(OPEN_ENROLLMENT_STATUSES),
        )
        .values(version=draft.number)
        .execution_options(synchronize_session=False)
    )
    made = [
        _move(session, sequence, placement, by_key, the_plan, now)
        for placement in the_plan.placements
    ]
    # Nothing of this sequence may have been claimed or planned behind the plan's back (on
    # PostgreSQL a claim can only take a row made after the lock): else, all of it waits.
    session.flush()
    busy = _claimed(session, sequence)
    if busy:
        raise PublishBusy(busy)
    newest_made = max((i for i in made if i is not None), default=0)
    if _newest_delivery(session, sequence) > max(the_plan.max_delivery_id, newest_made):
        raise PublishBusy(1)
    draft.state = VersionState.PUBLISHED
    draft.published_at = now
    draft.published_by = actor_email
    draft.summary = the_plan.summary()
    session.flush()
    return draft


def _label(plan_: PublishPlan, key: str | None, by_key: dict[str, Step]) -> str:
    number = plan_.number_of(key)
    if number is not None:
        return f"step {number}"
    if key is not None and key in plan_.removed:
        return f"removed step {plan_.removed[key][0]}"
    return "the end" if key is None else f"step {by_key[key].id}"


def _move(
    session: Session,
    sequence: Sequence,
    placement: Placement,
    by_key: dict[str, Step],
    the_plan: PublishPlan,
    now: datetime,
) -> int | None:
    """Carry out one placement: re-point, skip or add the enrollment's next part.

    Returns the id of a delivery it made (a stuck enrollment's next part), else None.
    """
    if not placement.changes:
        return None
    number = the_plan.version
    target = by_key[placement.target_key] if placement.target_key is not None else None
    enrollment = session.get(Enrollment, placement.enrollment_id)
    assert enrollment is not None
    delivery_id = placement.waiting_id
    if placement.waiting_id is not None:
        values: dict[str, Any]
        if target is not None:
            values = {"step_id": target.id}
        else:
            why = (
                f"step removed in version {number}"
                if placement.waiting_key in the_plan.removed
                else f"step moved before their place in version {number}"
            )
            values = {"state": DeliveryState.SKIPPED, "last_error": why}
        moved = session.execute(
            update(Delivery)
            .where(Delivery.id == placement.waiting_id, Delivery.state.in_(UNSENT_STATES))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if not moved.rowcount:  # type: ignore[attr-defined]
            raise PublishBusy(1)  # claimed since the plan was made: try again
    made: int | None = None
    if placement.waiting_id is None and target is not None:
        due = placement.due_at or now
        row = planning.add_delivery(
            session,
            DeliveryKind.STEP,
            enrollment.subscriber_id,
            due,
            now,
            enrollment_id=enrollment.id,
            step_id=target.id,
            held=planning.paused(enrollment),
        )
        session.flush()
        delivery_id = made = row.id
    if target is None:
        enrollment.status = EnrollmentStatus.COMPLETED
        enrollment.ended_at = now
    session.add(
        Event(
            subscriber_id=placement.subscriber_id,
            delivery_id=delivery_id,
            kind="moved",
            data={
                "version": number,
                "sequence": sequence.slug,
                "from": _label(the_plan, placement.waiting_key, by_key),
                "to": _label(the_plan, placement.target_key, by_key),
                "text": f"moved by version {number}: "
                f"{_label(the_plan, placement.waiting_key, by_key)} → "
                f"{_label(the_plan, placement.target_key, by_key)}",
            },
            created_at=now,
        )
    )
    return made
