"""Live edits: drafts, the dry run and publish, with people at every place in a sequence.

Each edit is published over the same crowd (not started, waiting on each step, retrying,
past a failed part, finished, stopped) on SQLite and PostgreSQL; the test checks the dry
run's numbers and sentences, that the publish did exactly what the dry run said, and the
promises: nobody gets a step twice, nobody moves backwards, no row is ever deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.content import drafts, publishing
from newsletter.content.drafts import DraftError
from newsletter.content.publishing import PublishBusy, PublishPlan
from newsletter.db import db
from newsletter.delivery.policy import Outcome
from newsletter.models import (
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
from tests.helpers.crowd import seat
from tests.helpers.sending import active_subscriber, claim_all, deliver, delivery
from tests.helpers.smtp import SmtpSink

S = DeliveryState
# Not sent yet: a publish may point these at another step.
UNSENT = (S.SCHEDULED, S.RETRY, S.HELD)

# Who is where: (name, enrollment status, {old step number: delivery state}).
CROWD: list[tuple[str, EnrollmentStatus, dict[int, DeliveryState]]] = [
    ("pending", EnrollmentStatus.PENDING, {}),
    ("wait1", EnrollmentStatus.ACTIVE, {1: S.SCHEDULED}),
    ("wait2", EnrollmentStatus.ACTIVE, {1: S.SENT, 2: S.SCHEDULED}),
    ("wait3", EnrollmentStatus.ACTIVE, {1: S.SENT, 2: S.SENT, 3: S.SCHEDULED}),
    ("retry3", EnrollmentStatus.ACTIVE, {1: S.SENT, 2: S.SENT, 3: S.RETRY}),
    ("failed2", EnrollmentStatus.ACTIVE, {1: S.SENT, 2: S.FAILED, 3: S.SCHEDULED}),
    ("wait4", EnrollmentStatus.ACTIVE, {1: S.SENT, 2: S.SENT, 3: S.SENT, 4: S.SCHEDULED}),
    ("finished", EnrollmentStatus.COMPLETED, {1: S.SENT, 2: S.SENT, 3: S.SENT, 4: S.SENT}),
    ("stopped", EnrollmentStatus.STOPPED, {1: S.SENT, 2: S.SKIPPED}),
]


def the_sequence(session: Session) -> Sequence:
    return session.scalars(select(Sequence)).one()


def seat_crowd(session: Session, sequence: Sequence) -> dict[str, int]:
    """Subscribers at every place of the 4-step seed sequence; their enrollment ids by name."""
    now = clock.now()
    assert len(sequence.steps) == 4
    return {
        name: seat(
            session,
            sequence,
            f"{name}@example.org",
            status,
            rows,
            now=now,
            due=now + timedelta(hours=20),
        )
        for name, status, rows in CROWD
    }


@dataclass
class World:
    """The crowd's enrollment ids and the old steps' keys (1-based, as the admin sees them)."""

    crowd: dict[str, int]
    keys: dict[int, str]


def make_world() -> World:
    with db.transaction() as session:
        sequence = the_sequence(session)
        crowd = seat_crowd(session, sequence)
        keys = {step.position: step.key for step in sequence.steps}
    return World(crowd, keys)


def counts(session: Session) -> dict[str, int]:
    return {
        model.__name__: int(session.scalar(select(func.count()).select_from(model)) or 0)
        for model in (Subscriber, Enrollment, Delivery, Step, Event)
    }


def steps_had(session: Session, enrollment_id: int) -> dict[str, DeliveryState]:
    """Step key -> state of each delivery of an enrollment."""
    return {
        key: state
        for key, state in session.execute(
            select(Step.key, Delivery.state)
            .join(Delivery, Delivery.step_id == Step.id)
            .where(Delivery.enrollment_id == enrollment_id)
        )
        .tuples()
        .all()
    }


def waiting_key(session: Session, enrollment_id: int) -> str | None:
    return session.scalar(
        select(Step.key)
        .join(Delivery, Delivery.step_id == Step.id)
        .where(
            Delivery.enrollment_id == enrollment_id,
            Delivery.state.in_(UNSENT),
        )
    )


Edit = Callable[[Session, SequenceVersion, World], Any]


def publish_edit(edit: Edit, world: World) -> tuple[PublishPlan, PublishPlan | None, Any]:
    """Draft the edit, take the dry run, publish; (the plan, a re-plan after, the edit's value)."""
    with db.transaction() as session:
        sequence = the_sequence(session)
        draft = drafts.draft_of(session, sequence)
        value = edit(session, draft, world)
    with db.session() as session:
        the_plan = publishing.plan(session, the_sequence(session))
    with db.transaction() as session:
        before = counts(session)
        was = {name: steps_had(session, eid) for name, eid in world.crowd.items()}
        waits = {name: waiting_key(session, eid) for name, eid in world.crowd.items()}
        published = publishing.publish(session, the_sequence(session), "kit@example.org")
        assert published.state is VersionState.PUBLISHED
    with db.session() as session:
        after = counts(session)
        for model, number in before.items():
            assert after[model] >= number, f"{model} rows were deleted"
        by_id = {p.enrollment_id: p for p in the_plan.placements}
        for name, eid in world.crowd.items():
            now_had = steps_had(session, eid)
            # Nothing a person had changes; at most one row per step (the unique pair).
            for key, state in was[name].items():
                if state not in UNSENT:
                    assert now_had[key] == state, (name, key)
            placement = by_id.get(eid)
            if placement is None:
                assert now_had == was[name], name
                continue
            # The publish did what the dry run said.
            assert waiting_key(session, eid) == placement.target_key, name
            if placement.target_key is not None:
                assert placement.target_key not in {
                    k for k, s in was[name].items() if s not in UNSENT
                }, name
            if placement.changes and waits[name] is not None:
                event = session.scalars(
                    select(Event).where(
                        Event.subscriber_id == placement.subscriber_id, Event.kind == "moved"
                    )
                ).one()
                assert event.data["version"] == the_plan.version
        enrollment_versions = set(
            session.scalars(
                select(Enrollment.version).where(
                    Enrollment.status.in_([EnrollmentStatus.PENDING, EnrollmentStatus.ACTIVE])
                )
            )
        )
        assert enrollment_versions == {the_plan.version}
        replan = publishing.plan(session, the_sequence(session))
    assert the_plan.safe
    return the_plan, replan, value


def target_of(the_plan: PublishPlan, world: World, name: str) -> str | None:
    return next(p.target_key for p in the_plan.placements if p.enrollment_id == world.crowd[name])


def sentence_list(the_plan: PublishPlan) -> list[str]:
    return list(the_plan.sentences())


def test_insert_after_step_two_reaches_those_past_it_only(app: Flask) -> None:
    world = make_world()

    def edit(session: Session, draft: SequenceVersion, world: World) -> str:
        key = drafts.add_step(session, draft, world.keys[2])
        drafts.update_step(session, draft, key, subject="A new part", body_md="Fresh **text**.")
        drafts.update_step(session, draft, world.keys[3], day_offset=3)
        drafts.update_step(session, draft, world.keys[4], day_offset=4)
        return key

    the_plan, _, new = publish_edit(edit, world)
    # Those who had steps 1 and 2 (wait3, retry3, failed2) get the new step 3 next.
    assert the_plan.next_part() == {new: 3}
    for name in ("wait3", "retry3", "failed2"):
        assert target_of(the_plan, world, name) == new
    assert target_of(the_plan, world, "wait1") == world.keys[1]
    assert target_of(the_plan, world, "wait2") == world.keys[2]
    assert target_of(the_plan, world, "wait4") == world.keys[4]  # the new step is behind them
    assert sentence_list(the_plan) == [
        "6 people are in progress",
        "1 person has not confirmed yet and will start on the new version",
        "3 will get the new step 3 as their next part",
        "1 person has finished and gets nothing more",
        "nobody gets two parts in one day, nobody gets a part they already had, "
        "nobody moves backwards",
    ]
    with db.session() as session:
        live = [(s.position, s.key) for s in the_sequence(session).steps]
        assert live == [
            (1, world.keys[1]),
            (2, world.keys[2]),
            (3, new),
            (4, world.keys[3]),
            (5, world.keys[4]),
        ]


def test_insert_before_step_one_reaches_only_who_has_had_nothing(app: Flask) -> None:
    world = make_world()
    the_plan, _, new = publish_edit(
        lambda session, draft, world: drafts.add_step(session, draft, None), world
    )
    assert the_plan.next_part() == {new: 1}
    assert target_of(the_plan, world, "wait1") == new


def test_insert_after_the_last_step_reaches_nobody_and_finished_stay_finished(app: Flask) -> None:
    world = make_world()

    def edit(session: Session, draft: SequenceVersion, world: World) -> str:
        key = drafts.add_step(session, draft, world.keys[4])
        return key

    the_plan, _, new = publish_edit(edit, world)
    assert the_plan.next_part() == {}
    assert "nobody will get the new step 5 as their next part" in sentence_list(the_plan)
    with db.session() as session:
        finished = session.get(Enrollment, world.crowd["finished"])
        assert finished is not None and finished.status is EnrollmentStatus.COMPLETED


def test_removing_the_step_people_wait_on_moves_them_to_the_next(app: Flask) -> None:
    world = make_world()
    the_plan, replan, _ = publish_edit(
        lambda session, draft, world: drafts.remove_step(session, draft, world.keys[3]), world
    )
    for name in ("wait3", "retry3", "failed2"):
        assert target_of(the_plan, world, name) == world.keys[4]
    assert target_of(the_plan, world, "wait4") == world.keys[4]  # unchanged
    subject = the_plan.removed[world.keys[3]][1]
    assert (
        f"3 are waiting on the step you removed (step 3, “{subject}”) and move on to "
        f"{the_plan.step_name(world.keys[4])}" in sentence_list(the_plan)
    )
    with db.session() as session:
        removed = session.scalars(select(Step).where(Step.key == world.keys[3])).one()
        assert removed.removed_at is not None and removed.position < 0
        # The history of who had it stays: wait4's sent step 3 still points at its row.
        assert steps_had(session, world.crowd["wait4"])[world.keys[3]] is S.SENT
        assert [s.position for s in the_sequence(session).steps] == [1, 2, 3]
    # Published again, nobody moves: the plan of the same steps is empty of changes.
    assert replan is not None and not any(p.changes for p in replan.placements)


def test_removing_the_last_step_finishes_who_waits_on_it(app: Flask) -> None:
    world = make_world()
    the_plan, _, _ = publish_edit(
        lambda session, draft, world: drafts.remove_step(session, draft, world.keys[4]), world
    )
    assert target_of(the_plan, world, "wait4") is None
    subject = the_plan.removed[world.keys[4]][1]
    assert (
        f"1 is waiting on the step you removed (step 4, “{subject}”) and finishes "
        "(nothing is left)" in sentence_list(the_plan)
    )
    with db.session() as session:
        enrollment = session.get(Enrollment, world.crowd["wait4"])
        assert enrollment is not None and enrollment.status is EnrollmentStatus.COMPLETED
        row = session.scalars(
            select(Delivery)
            .join(Step, Step.id == Delivery.step_id)
            .where(Delivery.enrollment_id == world.crowd["wait4"], Step.key == world.keys[4])
        ).one()
        assert row.state is S.SKIPPED
        assert row.last_error == f"step removed in version {the_plan.version}"


def test_reorder_moves_people_forward_only(app: Flask) -> None:
    world = make_world()

    def edit(session: Session, draft: SequenceVersion, world: World) -> None:
        drafts.move_step(session, draft, world.keys[4], 1)  # 1, 4, 2, 3
        for index, key in enumerate([world.keys[1], world.keys[4], world.keys[2], world.keys[3]]):
            drafts.update_step(session, draft, key, day_offset=index)

    the_plan, _, _ = publish_edit(edit, world)
    # wait2 had step 1: the old step 4, now second, is the first one after their place.
    assert target_of(the_plan, world, "wait2") == world.keys[4]
    assert target_of(the_plan, world, "wait3") == world.keys[3]
    # wait4 had 1, 2 and 3, all after the old step 4 now: nothing is left after their place.
    assert target_of(the_plan, world, "wait4") is None
    assert the_plan.moved_forward() == {(3, 2, False): 1, (2, None, True): 1}
    sentences = sentence_list(the_plan)
    assert "1 waiting on step 3 gets step 2 first, which now comes before it" in sentences
    assert (
        "1 waiting on step 2, which now comes before where they are, moves on to the end "
        "(nothing is left)" in sentences
    )
    with db.session() as session:
        row = session.scalars(
            select(Delivery)
            .join(Step, Step.id == Delivery.step_id)
            .where(Delivery.enrollment_id == world.crowd["wait4"], Step.key == world.keys[4])
        ).one()
        assert row.state is S.SKIPPED
        assert row.last_error == f"step moved before their place in version {the_plan.version}"


def test_changing_a_day_offset_or_text_moves_nobody_and_keeps_due_times(app: Flask) -> None:
    world = make_world()
    with db.session() as session:
        dues = dict(
            session.execute(select(Delivery.id, Delivery.due_at).order_by(Delivery.id))
            .tuples()
            .all()
        )

    def edit(session: Session, draft: SequenceVersion, world: World) -> None:
        drafts.update_step(session, draft, world.keys[4], day_offset=6)
        drafts.update_step(
            session, draft, world.keys[2], subject="Day two, {{ first_name or 'friend' }}"
        )

    the_plan, _, _ = publish_edit(edit, world)
    assert not any(p.changes for p in the_plan.placements)
    with db.session() as session:
        assert dict(session.execute(select(Delivery.id, Delivery.due_at)).tuples().all()) == dues
        steps = the_sequence(session).steps
        assert steps[3].day_offset == 6
        assert steps[1].subject == "Day two, {{ first_name or 'friend' }}"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("body_md", "See [this](http://example.org).", "https://"),
        ("body_md", "![](https://example.org/a.png)", "alt text"),
        ("body_md", "Hello {{ first_name.__class__ }}", ""),
        ("subject", "", "must not be empty"),
        ("subject", "two\nlines", "one line"),
        ("day_offset", "soon", "whole number"),
        ("resources", [{"title": "More", "blurb": "", "url": "http://x.org"}], "https://"),
        ("colour", "red", "is not a field"),
    ],
)
@pytest.mark.any_database
def test_a_bad_edit_names_its_field_and_changes_nothing(
    app: Flask, field: str, value: Any, words: str
) -> None:
    with db.transaction() as session:
        draft = drafts.draft_of(session, the_sequence(session))
        key = drafts.draft_steps(draft)[0]["key"]
        before = drafts.draft_steps(draft)
    with db.transaction() as session:
        draft = drafts.draft_of(session, the_sequence(session))
        with pytest.raises(DraftError) as caught:
            drafts.update_step(session, draft, key, **{"subject": "Fine", field: value})
        assert caught.value.field == field
        assert words in caught.value.message
        assert drafts.draft_steps(draft) == before


@pytest.mark.any_database
def test_draft_numbers_discard_and_settings(app: Flask) -> None:
    with db.transaction() as session:
        sequence = the_sequence(session)
        assert drafts.published(session, sequence) is not None  # the import recorded 1
        draft = drafts.draft_of(session, sequence)
        assert draft.number == 2 and drafts.draft_of(session, sequence) is draft
        drafts.update_settings(session, draft, send_hour=8, send_days="12345")
        with pytest.raises(DraftError) as caught:
            drafts.update_settings(session, draft, send_end_hour=3)
        assert caught.value.field == "send_end_hour"
        with pytest.raises(DraftError):
            drafts.remove_step(session, draft, "no-such-key")
        assert drafts.warnings(draft)  # the seed's "Keep reading" link has no URL yet
        drafts.discard_draft(session, sequence)
        assert drafts.open_draft(session, sequence) is None
    with db.transaction() as session:
        sequence = the_sequence(session)
        with pytest.raises(DraftError):
            publishing.publish(session, sequence, "kit@example.org")
        draft = drafts.draft_of(session, sequence)
        drafts.update_settings(session, draft, send_hour=8, send_days="12345")
        publishing.publish(session, sequence, "kit@example.org")
    with db.session() as session:
        sequence = the_sequence(session)
        assert (sequence.send_hour, sequence.send_days) == (8, "12345")
        numbers = session.execute(
            select(
                SequenceVersion.number, SequenceVersion.state, SequenceVersion.published_by
            ).order_by(SequenceVersion.number)
        ).all()
        assert [tuple(n) for n in numbers] == [
            (1, VersionState.PUBLISHED, None),
            (2, VersionState.PUBLISHED, "kit@example.org"),  # the discarded draft left no trace
        ]
        with pytest.raises(DraftError):
            drafts.update_step(
                session, session.scalars(select(SequenceVersion)).first(), "x", subject="y"
            )  # type: ignore[arg-type]


def test_publish_waits_while_a_mail_of_the_sequence_is_being_sent(app: Flask) -> None:
    world = make_world()
    with db.transaction() as session:
        row = session.scalars(
            select(Delivery).where(
                Delivery.enrollment_id == world.crowd["wait2"], Delivery.state == S.SCHEDULED
            )
        ).one()
        row.state, row.claimed_at = S.CLAIMED, clock.now()
        draft = drafts.draft_of(session, the_sequence(session))
        drafts.remove_step(session, draft, world.keys[2])
    with db.session() as session:
        the_plan = publishing.plan(session, the_sequence(session))
        assert the_plan.busy == 1
        assert (
            "1 mail of this sequence is being sent right now; publish again in a minute"
            in sentence_list(the_plan)
        )
        # The one being sent is not planned: the worker schedules what follows it.
        assert world.crowd["wait2"] not in {p.enrollment_id for p in the_plan.placements}
    with db.transaction() as session:
        before = counts(session)
        with pytest.raises(PublishBusy) as caught:
            publishing.publish(session, the_sequence(session), "kit@example.org")
    assert str(caught.value) == (
        "1 mail of this sequence is being sent right now; publish again in a minute"
    )
    with db.session() as session:
        assert counts(session) == before
        assert drafts.open_draft(session, the_sequence(session)) is not None
        assert len(the_sequence(session).steps) == 4


def test_a_sent_part_moves_past_a_next_part_already_had(app: Flask, smtp_sink: SmtpSink) -> None:
    """The hot path: the step next by position was had already (a reorder, a resend), so the
    series goes on to the first one it has not had instead of stalling on the unique pair."""
    subscriber_id = active_subscriber("ahead@example.org")
    with db.transaction() as session:
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == subscriber_id)
        ).one()
        steps = the_sequence(session).steps
        session.add(
            Delivery(
                kind=DeliveryKind.STEP,
                subscriber_id=subscriber_id,
                enrollment_id=enrollment.id,
                step_id=steps[1].id,
                due_at=clock.now(),
                state=S.SENT,
                sent_at=clock.now(),
            )
        )
        third = steps[2].id
    part_one = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    deliver(app, part_one)
    with db.session() as session:
        next_row = session.scalars(
            select(Delivery).where(
                Delivery.subscriber_id == subscriber_id, Delivery.state == S.SCHEDULED
            )
        ).one()
        assert next_row.step_id == third


def test_import_over_a_sequence_in_use_needs_publish(app: Flask, tmp_path: Any) -> None:
    from newsletter.content.sequences import SEED_ARTICLE

    world = make_world()
    runner = app.test_cli_runner()
    refused = runner.invoke(args=["import-article", str(SEED_ARTICLE), "--replace"])
    assert refused.exit_code != 0 and "--publish" in refused.output
    done = runner.invoke(args=["import-article", str(SEED_ARTICLE), "--parts", "3", "--publish"])
    assert done.exit_code == 0, done.output
    with db.session() as session:
        sequence = the_sequence(session)
        assert [s.key for s in sequence.steps] == [world.keys[1], world.keys[2], world.keys[3]]
        wait4 = session.get(Enrollment, world.crowd["wait4"])
        assert wait4 is not None and wait4.status is EnrollmentStatus.COMPLETED
        assert wait4.version == 2  # finished by version 2 (its last step went)
        wait3 = session.get(Enrollment, world.crowd["wait3"])
        assert wait3 is not None and wait3.version == 2


def test_after_a_reorder_the_series_follows_the_new_order(
    app: Flask, smtp_sink: SmtpSink, at_time: Callable[[datetime], None]
) -> None:
    """Through the real send path: part 1 sent, then the last step moved to second place."""
    at_time(datetime(2026, 6, 10, 10, 0, tzinfo=UTC))  # inside the send window, in UTC
    subscriber_id = active_subscriber("order@example.org")
    part_one = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    deliver(app, part_one)
    with db.transaction() as session:
        sequence = the_sequence(session)
        subjects = {step.key: step.subject for step in sequence.steps}
        keys = [step.key for step in sequence.steps]
        draft = drafts.draft_of(session, sequence)
        drafts.move_step(session, draft, keys[3], 1)
        for index, key in enumerate([keys[0], keys[3], keys[1], keys[2]]):
            drafts.update_step(session, draft, key, day_offset=index)
        publishing.publish(session, sequence, "kit@example.org")
    for _ in range(3):
        with db.transaction() as session:
            waiting = session.scalars(
                select(Delivery).where(
                    Delivery.subscriber_id == subscriber_id, Delivery.state == S.SCHEDULED
                )
            ).one()
            waiting.due_at = clock.now()
        (claimed,) = claim_all()
        assert deliver(app, claimed) is Outcome.SENT
    with db.session() as session:
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == subscriber_id)
        ).one()
        assert enrollment.status is EnrollmentStatus.COMPLETED
    got = [str(m["Subject"]) for m in smtp_sink.to("order@example.org")]
    assert got == [subjects[k] for k in (keys[0], keys[3], keys[1], keys[2])]


def test_a_paused_person_waiting_on_a_removed_step_stays_held_on_the_next(app: Flask) -> None:
    """A paused person's held part is re-pointed like a waiting one, and stays held."""
    from newsletter.audience.moves import pause_enrollment, resume_enrollment

    world = make_world()
    with db.transaction() as session:
        enrollment = session.get(Enrollment, world.crowd["wait3"])
        assert enrollment is not None
        assert pause_enrollment(session, enrollment, clock.now()) == 1
    the_plan, _, _ = publish_edit(
        lambda session, draft, world: drafts.remove_step(session, draft, world.keys[3]), world
    )
    assert target_of(the_plan, world, "wait3") == world.keys[4]
    with db.transaction() as session:
        held = session.execute(
            select(Step.key, Delivery.state)
            .join(Delivery, Delivery.step_id == Step.id)
            .where(Delivery.enrollment_id == world.crowd["wait3"], Delivery.state == S.HELD)
        ).all()
        assert [tuple(row) for row in held] == [(world.keys[4], S.HELD)]
        enrollment = session.get(Enrollment, world.crowd["wait3"])
        assert enrollment is not None and enrollment.status is EnrollmentStatus.PAUSED
        assert enrollment.version == the_plan.version
        resume_enrollment(session, enrollment, clock.now())
    with db.session() as session:
        assert waiting_key(session, world.crowd["wait3"]) == world.keys[4]


@pytest.mark.parametrize(
    ("edit", "waits"),
    [
        ("text of a later step", False),
        ("a step right after the one on its way", True),
        ("a step after the next one", False),
    ],
)
def test_a_part_on_its_way_holds_up_only_a_publish_that_changes_what_follows_it(
    app: Flask, edit: str, waits: bool
) -> None:
    """wait2's part 2 is being sent; the worker will schedule part 3 as the live version says."""
    world = make_world()
    with db.transaction() as session:
        row = session.scalars(
            select(Delivery).where(
                Delivery.enrollment_id == world.crowd["wait2"], Delivery.state == S.SCHEDULED
            )
        ).one()
        row.state, row.claimed_at = S.CLAIMED, clock.now()
        claimed_id = row.id
        draft = drafts.draft_of(session, the_sequence(session))
        if edit == "text of a later step":
            drafts.update_step(session, draft, world.keys[3], subject="Part three, retold")
        elif edit == "a step right after the one on its way":
            drafts.add_step(session, draft, world.keys[2])
        else:
            key = drafts.add_step(session, draft, world.keys[3])
            drafts.update_step(session, draft, key, day_offset=2)
    with db.transaction() as session:
        if waits:
            with pytest.raises(PublishBusy):
                publishing.publish(session, the_sequence(session), "kit@example.org")
        else:
            publishing.publish(session, the_sequence(session), "kit@example.org")
    with db.session() as session:
        assert drafts.open_draft(session, the_sequence(session)) is not None or not waits
        claimed = session.get(Delivery, claimed_id)
        assert claimed is not None and claimed.state is S.CLAIMED
        assert (
            claimed.step_id
            == session.scalars(select(Step.id).where(Step.key == world.keys[2])).one()
        )
        enrollment = session.get(Enrollment, world.crowd["wait2"])
        assert enrollment is not None and enrollment.version == (1 if waits else 2)
