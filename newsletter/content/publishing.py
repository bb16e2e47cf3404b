"""Publishing a sequence's draft: the dry run, and applying it to the live steps.

`plan` is the dry run of publishing a draft (content/drafts.py), computed from the real
enrollments and deliveries without writing anything; `publish` applies the draft to the live
steps and moves every open enrollment by Kit's rule:

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
from newsletter.content.drafts import (
    SETTINGS,
    STEP_FIELDS,
    DraftError,
    checked_field,
    draft_of_copy,
    open_draft,
)
from newsletter.delivery import planning
from newsletter.mail.sandbox import AdminTemplates
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
)
from newsletter.schedule import MIN_GAP_DAYS, REAL_DAY, SendWindow, step_due_at

# A delivery not yet sent, that a publish may point at another step: waiting, or held while
# its sequence or its person is paused (it stays held).
UNSENT_STATES = WAITING_STATES | {DeliveryState.HELD}
# The enrollments a publish moves: on their way, paused ones included.
IN_PROGRESS = (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED)

# Delivery states that mean the enrollment has had the step (Kit's rule counts them).
HAD_STATES = frozenset(
    {DeliveryState.SENT, DeliveryState.FAILED, DeliveryState.SKIPPED, DeliveryState.CLAIMED}
)


class PublishBusy(RuntimeError):
    """Mails of the sequence are being sent right now: a publish must wait for them."""

    def __init__(self, claimed: int) -> None:
        mails = "1 mail" if claimed == 1 else f"{claimed} mails"
        verb = "is" if claimed == 1 else "are"
        super().__init__(
            f"{mails} of this sequence {verb} being sent right now; publish again in a minute"
        )
        self.claimed = claimed


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
    busy: int = 0  # parts being sent whose next part the publish would change
    max_delivery_id: int = 0
    # Parts being sent whose next part is the same under both versions: they need not wait.
    claimed_ids: set[int] = field(default_factory=set)

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
        select(
            Enrollment.id,
            Enrollment.subscriber_id,
            Enrollment.started_at,
            Subscriber.time_zone,
            Subscriber.send_hour,
        )
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
    settings_changed = any(settings[name] != getattr(sequence, name) for name in SETTINGS)
    for enrollment in enrollments:
        mine = rows.get(enrollment.id, [])
        claimed = [r for r in mine if r.state == DeliveryState.CLAIMED]
        if claimed:
            # Being sent: the worker schedules what follows, as the version it loaded says.
            # When this publish would say otherwise, it waits (PublishBusy) and is planned
            # again with the part recorded as had.
            if settings_changed or not _follows_alike(
                claimed, mine, live, order, days, ranks, all_steps
            ):
                result.busy += len(claimed)
            else:
                result.claimed_ids.add(claimed[0].id)
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
                send_hour=enrollment.send_hour,
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


def _follows_alike(
    claimed: list[Any],
    mine: list[Any],
    live: list[Step],
    order: list[str],
    days: dict[str, int],
    ranks: dict[str, float],
    all_steps: dict[int, str],
) -> bool:
    """Whether the part after the one being sent is the same step, on the same day, under the
    live version (what the worker loaded) and under the draft (Kit's rule)."""
    if len(claimed) != 1 or any(r.state in UNSENT_STATES for r in mine):
        return False
    step = next((s for s in live if s.id == claimed[0].step_id), None)
    if step is None or step.key not in order:
        return False  # a step the publish removes must not be on its way meanwhile
    taken = {r.step_id for r in mine}
    old_next = planning.next_step(live, step, taken)
    had = [all_steps[r.step_id] for r in mine if r.state in HAD_STATES]
    place = max(ranks[key] for key in had)
    taken_keys = {all_steps[i] for i in taken}
    new_next = next((k for k in order if ranks[k] > place and k not in taken_keys), None)
    if old_next is None or new_next is None:
        return old_next is None and new_next is None
    return old_next.key == new_next and old_next.day_offset == days[new_next]


def _claimed_ids(session: Session, sequence: Sequence) -> set[int]:
    return set(
        session.scalars(
            select(Delivery.id)
            .join(Step, Step.id == Delivery.step_id)
            .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
            .where(
                Step.sequence_id == sequence.id,
                Delivery.state == DeliveryState.CLAIMED,
                Enrollment.status.in_(IN_PROGRESS),
            )
        )
    )


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
            Enrollment.status.in_(OPEN_ENROLLMENT_STATUSES),
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


def _check_whole(steps: list[dict[str, Any]]) -> None:
    """What a publish needs beyond each field: the days in order."""
    for number, step in enumerate(steps, start=1):
        if number > 1 and int(step["day_offset"]) < int(steps[number - 2]["day_offset"]):
            raise DraftError(
                "day_offset",
                f"step {number} is on day {step['day_offset']}, before step {number - 1} "
                f"(day {steps[number - 2]['day_offset']})",
            )


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
    the_plan = _placements(session, sequence, draft, now, day_seconds)
    if the_plan.busy:
        raise PublishBusy(the_plan.busy)
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
    behind_our_back = _claimed_ids(session, sequence) - the_plan.claimed_ids
    if behind_our_back:
        raise PublishBusy(len(behind_our_back))
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
        row = planning.add_part(session, enrollment, target.id, due, now)
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
