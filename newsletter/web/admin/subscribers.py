"""The subscribers pages: the table, the export, a person's timeline and the actions on them.

Thin: each view parses, calls one function of the audience room (directory, timeline,
erasure, subscriptions) and records what an admin changed or took out with the audit log,
in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from flask import (
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.admins import audit
from newsletter.audience import directory, erasure, moves, subscriptions, timeline
from newsletter.db import db
from newsletter.models import (
    Admin,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    Step,
    Subscriber,
    SubscriberStatus,
)
from newsletter.runtime import runtime
from newsletter.web.admin import bp
from newsletter.web.admin.access import current_admin, editor_required
from newsletter.web.admin.forms import ButtonForm
from newsletter.web.admin.people_forms import EraseForm, StepForm


def _me(session: Session) -> Admin:
    me = session.get(Admin, current_admin().id)
    assert me is not None
    return me


def _target(subscriber_id: int) -> str:
    # The id only: an audit entry outlives an erasure, so it must not hold the address.
    return f"subscriber:{subscriber_id}"


@bp.get("/subscribers")
@editor_required
def subscribers() -> ResponseReturnValue:
    """The table: filters, prefix search and keyset pages."""
    with db.session() as session:
        offered = directory.options(session)
        error: directory.QueryError | None = None
        page = None
        try:
            query = directory.parse_query(request.args, offered)
            page = directory.page(
                session,
                query,
                after=request.args.get("after") or None,
                before=request.args.get("before") or None,
            )
        except directory.QueryError as exc:
            error = exc
            query = directory.Query()
    return render_template(
        "admin/subscribers.html",
        page=page,
        query=query,
        asked=request.args,
        error=error,
        offered=offered,
        states=list(SubscriberStatus),
        sorts=directory.SORT_LABELS,
    ), (400 if error else 200)


@bp.get("/subscribers/export.csv")
@editor_required
def subscribers_export() -> ResponseReturnValue:
    """The table's current filter as CSV, streamed in keyset batches."""
    with db.session() as session:
        try:
            query = directory.parse_query(request.args, directory.options(session))
        except directory.QueryError as exc:
            flash(str(exc), "error")
            return redirect(url_for("admin.subscribers"), code=303)
    with db.transaction() as session:
        audit.record(
            session,
            actor=_me(session),
            action="subscriber.export",
            target="subscribers",
            after=query.describe(),
        )

    def rows() -> Iterator[str]:
        with db.session() as session:
            yield from directory.export_csv(session, query)

    stamp = clock.now().strftime("%Y%m%d-%H%M%S")
    return Response(
        stream_with_context(rows()),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="subscribers-{stamp}.csv"',
            "Cache-Control": "no-store",
        },
    )


def _detail(
    subscriber_id: int, errors: dict[str, str] | None = None, status: int = 200
) -> ResponseReturnValue:
    with db.session() as session:
        story = timeline.story(session, subscriber_id, clock.now())
        steps = directory.options(session).steps
    if story is None:
        abort(404)
    had = {
        e.delivery.step_id
        for e in story.entries
        if e.delivery is not None
        and e.delivery.kind is DeliveryKind.STEP
        and e.delivery.state is DeliveryState.SENT
    }
    return render_template(
        "admin/subscriber.html",
        story=story,
        person=story.subscriber,
        form=ButtonForm(),
        step_form=StepForm(),
        steps=steps,
        resendable=[s for s in steps if s.id in had],
        errors=errors or {},
        local_time=timeline.local_time,
    ), status


@bp.get("/subscribers/<int:subscriber_id>")
@editor_required
def subscriber(subscriber_id: int) -> ResponseReturnValue:
    """A person's timeline, the sentences that explain it, and the actions."""
    return _detail(subscriber_id)


def _enrollment_move(
    subscriber_id: int,
    enrollment_id: int,
    action: str,
    move: Callable[[Session, Enrollment], str],
    form: ButtonForm | StepForm,
) -> ResponseReturnValue:
    """Make one of the engine's moves on a person's enrollment, audited; its refusal shown
    beside the action's button, with nothing changed."""
    if not form.validate_on_submit():
        return _detail(subscriber_id, {f"{action}-{enrollment_id}": "Choose a step."}, status=400)
    try:
        with db.transaction() as session:
            enrollment = session.get(Enrollment, enrollment_id)
            if enrollment is None or enrollment.subscriber_id != subscriber_id:
                abort(404)
            before = enrollment.status.value
            said = move(session, enrollment)
            audit.record(
                session,
                actor=_me(session),
                action=f"subscriber.{action}",
                target=_target(subscriber_id),
                before={"enrollment": enrollment_id, "status": before},
                after={"enrollment": enrollment_id, "done": said},
            )
    except moves.ActionRefused as exc:
        return _detail(subscriber_id, {f"{action}-{enrollment_id}": str(exc)}, status=400)
    flash(said, "info")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), code=303)


def _by() -> str:
    return f"admin {current_admin().email}"


@bp.post("/subscribers/<int:subscriber_id>/enrollments/<int:enrollment_id>/pause")
@editor_required
def subscriber_pause(subscriber_id: int, enrollment_id: int) -> ResponseReturnValue:
    """Pause a person's way through a sequence (audience/moves.pause_enrollment)."""

    def move(session: Session, enrollment: Enrollment) -> str:
        moves.pause_enrollment(session, enrollment, clock.now(), by=_by())
        return "Paused: their next part waits until you resume them."

    return _enrollment_move(subscriber_id, enrollment_id, "pause", move, ButtonForm())


@bp.post("/subscribers/<int:subscriber_id>/enrollments/<int:enrollment_id>/resume")
@editor_required
def subscriber_resume(subscriber_id: int, enrollment_id: int) -> ResponseReturnValue:
    """Resume a paused person where they were (audience/moves.resume_enrollment)."""

    def move(session: Session, enrollment: Enrollment) -> str:
        moves.resume_enrollment(session, enrollment, clock.now(), by=_by())
        return "Resumed: their next part is due again."

    return _enrollment_move(subscriber_id, enrollment_id, "resume", move, ButtonForm())


@bp.post("/subscribers/<int:subscriber_id>/enrollments/<int:enrollment_id>/restart")
@editor_required
def subscriber_restart(subscriber_id: int, enrollment_id: int) -> ResponseReturnValue:
    """Start a person's sequence over from part 1 (audience/moves.restart_enrollment)."""

    def move(session: Session, enrollment: Enrollment) -> str:
        moves.restart_enrollment(
            session,
            enrollment,
            clock.now(),
            by=_by(),
            day_seconds=runtime().settings.drip_day_seconds,
        )
        return "Restarted: part 1 is due now."

    return _enrollment_move(subscriber_id, enrollment_id, "restart", move, ButtonForm())


def _step(session: Session, raw: str | None) -> Step:
    step = session.get(Step, int(raw)) if raw and raw.isdigit() and len(raw) < 12 else None
    if step is None:
        raise moves.ActionRefused("Choose a step from the list.")
    return step


@bp.post("/subscribers/<int:subscriber_id>/enrollments/<int:enrollment_id>/move")
@editor_required
def subscriber_move(subscriber_id: int, enrollment_id: int) -> ResponseReturnValue:
    """Move a person forward to a step (audience/moves.move_to_step)."""
    form = StepForm()

    def move(session: Session, enrollment: Enrollment) -> str:
        step = _step(session, form.step.data)
        moves.move_to_step(session, enrollment, step, clock.now(), by=_by())
        return f"Moved: part {step.position} is their next part, due now."

    return _enrollment_move(subscriber_id, enrollment_id, "move", move, form)


@bp.post("/subscribers/<int:subscriber_id>/resend")
@editor_required
def subscriber_resend(subscriber_id: int) -> ResponseReturnValue:
    """Send a person one more copy of a part they had (audience/moves.resend_step)."""
    form = StepForm()
    if not form.validate_on_submit():
        return _detail(subscriber_id, {"resend": "Choose a step."}, status=400)
    try:
        with db.transaction() as session:
            person = session.get(Subscriber, subscriber_id)
            if person is None:
                abort(404)
            step = _step(session, form.step.data)
            moves.resend_step(session, person, step, clock.now(), by=_by())
            audit.record(
                session,
                actor=_me(session),
                action="subscriber.resend",
                target=_target(subscriber_id),
                after={"step": step.id, "position": step.position},
            )
            position = step.position
    except moves.ActionRefused as exc:
        return _detail(subscriber_id, {"resend": str(exc)}, status=400)
    flash(f"A copy of part {position} is due now.", "info")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), code=303)


@bp.post("/subscribers/<int:subscriber_id>/unsubscribe")
@editor_required
def subscriber_unsubscribe(subscriber_id: int) -> ResponseReturnValue:
    """Unsubscribe a person on their behalf (source "admin")."""
    if not ButtonForm().validate_on_submit():
        abort(400)
    with db.transaction() as session:
        story = timeline.story(session, subscriber_id, clock.now())
        if story is None:
            abort(404)
        before = story.subscriber.status.value
        subscriptions.unsubscribe(session, subscriber_id, clock.now(), source="admin")
        audit.record(
            session,
            actor=_me(session),
            action="subscriber.unsubscribe",
            target=_target(subscriber_id),
            before={"status": before},
            after={"status": SubscriberStatus.UNSUBSCRIBED.value},
        )
    flash("Unsubscribed: nothing more is sent to them.", "info")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), code=303)


@bp.post("/subscribers/<int:subscriber_id>/export.json")
@editor_required
def subscriber_export(subscriber_id: int) -> ResponseReturnValue:
    """Everything held about a person, as a JSON download."""
    if not ButtonForm().validate_on_submit():
        abort(400)
    with db.transaction() as session:
        data = erasure.personal_data(session, subscriber_id)
        if data is None:
            abort(404)
        audit.record(
            session,
            actor=_me(session),
            action="subscriber.export_data",
            target=_target(subscriber_id),
        )
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        mimetype="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="subscriber-{subscriber_id}.json"',
            "Cache-Control": "no-store",
        },
    )


@bp.route("/subscribers/<int:subscriber_id>/erase", methods=["GET", "POST"])
@editor_required
def subscriber_erase(subscriber_id: int) -> ResponseReturnValue:
    """Erase a person, after a confirmation page of its own."""
    form = EraseForm()
    with db.session() as session:
        story = timeline.story(session, subscriber_id, clock.now())
    if story is None:
        abort(404)
    if story.subscriber.erased_at is not None:
        flash("This person was erased already.", "info")
        return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), code=303)
    if not form.validate_on_submit():
        status = 400 if request.method == "POST" else 200
        return render_template(
            "admin/subscriber_erase.html", form=form, person=story.subscriber
        ), status
    with db.transaction() as session:
        erasure.erase(session, subscriber_id, clock.now())
        audit.record(
            session,
            actor=_me(session),
            action="subscriber.erase",
            target=_target(subscriber_id),
            before={"status": story.subscriber.status.value},
            after={"erased": True},
        )
    flash("Erased: their personal data is gone, and their address is refused for good.", "info")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), code=303)
