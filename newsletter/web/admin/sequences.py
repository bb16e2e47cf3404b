"""The sequence pages: the list, a new sequence, settings, status, the default, test sends.

Thin views: each parses its form, calls the content room (catalogue, proposal, send_test,
preview) in one transaction with the audit entry of what it changed, and answers. Bad input
comes back as the same page with the error beside its field (status 400), having changed
nothing.
"""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session
from wtforms.fields.choices import SelectChoice

from newsletter import clock
from newsletter.admins import audit
from newsletter.content import catalogue, drafts, pausing, send_test
from newsletter.content.catalogue import CatalogueError
from newsletter.content.drafts import DraftError
from newsletter.content.editor import editor_view
from newsletter.content.preview import StepFields
from newsletter.db import db
from newsletter.delivery.holds import ActionRefused
from newsletter.mail.transport import SendError
from newsletter.models import Sequence
from newsletter.runtime import runtime
from newsletter.web.admin import bp
from newsletter.web.admin.access import current_admin, editor_required
from newsletter.web.admin.forms import ButtonForm
from newsletter.web.admin.sequence_forms import (
    NewSequenceForm,
    SettingsForm,
    TestSendForm,
)


def sequence_or_404(session: Session, sequence_id: int) -> Sequence:
    """The sequence with this id, or a 404 answer."""
    sequence = session.get(Sequence, sequence_id)
    if sequence is None:
        abort(404)
    return sequence


def target_of(sequence: Sequence) -> str:
    """How audit entries name a sequence."""
    return f"sequence:{sequence.slug}"


def answer(template: str, form: Any, **context: Any) -> ResponseReturnValue:
    """The page again; 400 when a submitted form was refused."""
    status = 400 if request.method == "POST" else 200
    return render_template(template, form=form, **context), status


def editor_steps(session: Session, sequence: Sequence) -> list[dict[str, Any]]:
    """The steps the editor shows, in order: each a snapshot entry with its `key`."""
    return [{"key": str(step.position), **StepFields.of(step).as_dict()} for step in sequence.steps]


# -- the list and a new sequence -----------------------------------------------------------------


@bp.get("/sequences")
@editor_required
def sequences() -> ResponseReturnValue:
    """Every sequence: title, parts, people in progress, the signup page's default."""
    with db.session() as session:
        rows = catalogue.sequence_rows(session)
    return render_template("admin/sequences/list.html", rows=rows)


@bp.route("/sequences/new", methods=["GET", "POST"])
@editor_required
def sequence_new() -> ResponseReturnValue:
    """A new, empty sequence."""
    form = NewSequenceForm()
    if form.validate_on_submit():
        try:
            with db.transaction() as session:
                sequence = catalogue.create_sequence(
                    session, title=form.title.data or "", slug=form.slug.data or ""
                )
                audit.record(
                    session,
                    actor=current_admin(),
                    action="sequence.create",
                    target=target_of(sequence),
                    after={"title": sequence.title, "slug": sequence.slug},
                )
                sequence_id = sequence.id
        except CatalogueError as exc:
            getattr(form, exc.field).errors.append(exc.message)
        else:
            flash("The sequence is created. Add its first part.", "info")
            return redirect(url_for("admin.sequence", sequence_id=sequence_id), code=303)
    return answer("admin/sequences/new.html", form)


# -- one sequence --------------------------------------------------------------------------------


@bp.get("/sequences/<int:sequence_id>")
@editor_required
def sequence(sequence_id: int) -> ResponseReturnValue:
    """A sequence's parts in order, with their days, and what can be done with them."""
    with db.session() as session:
        seq = sequence_or_404(session, sequence_id)
        return render_template(
            "admin/sequences/sequence.html",
            sequence=seq,
            view=editor_view(session, seq),
            button=ButtonForm(),
        )


def _window(form: SettingsForm) -> dict[str, Any]:
    days = sorted(set(form.send_days.data or ()))
    return {
        "send_hour": form.send_hour.data,
        "send_end_hour": form.send_end_hour.data,
        "send_days": "".join(str(day) for day in days),
    }


@bp.route("/sequences/<int:sequence_id>/settings", methods=["GET", "POST"])
@editor_required
def sequence_settings(sequence_id: int) -> ResponseReturnValue:
    """The title, the send window (hours and weekdays, in each subscriber's zone) and tracking.

    The title and tracking change at once; the window is part of the draft, published with it.
    """
    with db.session() as session:
        seq = sequence_or_404(session, sequence_id)
        view = editor_view(session, seq)
        shown = {
            "title": seq.title,
            "send_hour": view.settings.get("send_hour", seq.send_hour),
            "send_end_hour": view.settings.get("send_end_hour", seq.send_end_hour),
            "send_days": [int(d) for d in view.settings.get("send_days", seq.send_days)],
            "tracking": seq.tracking,
        }
        form = SettingsForm(data=None if request.method == "POST" else shown)
        context = {"sequence": seq, "button": ButtonForm(), "draft": view.draft}
        if not form.validate_on_submit():
            return answer("admin/sequences/settings.html", form, **context)
    window = _window(form)
    before_window = {name: view.settings.get(name) for name in window}
    try:
        with db.transaction() as session:
            seq = sequence_or_404(session, sequence_id)
            if not window["send_days"]:
                raise CatalogueError("send_days", "Choose at least one day.")
            before, after = catalogue.retitle(session, seq, form.title.data or "")
            _audit_change(session, seq, "sequence.retitle", {"title": before}, {"title": after})
            was, now = catalogue.set_tracking(session, seq, bool(form.tracking.data))
            _audit_change(session, seq, "sequence.tracking", {"tracking": was}, {"tracking": now})
            if window != before_window:
                drafts.update_settings(session, drafts.draft_of(session, seq), **window)
                _audit_change(session, seq, "sequence.settings", before_window, window)
    except (CatalogueError, DraftError) as exc:
        getattr(form, exc.field).errors.append(exc.message)
        return answer("admin/sequences/settings.html", form, **context)
    if window != before_window:
        flash("The send window is saved in the draft: it applies once published.", "info")
    else:
        flash("Settings saved.", "info")
    return redirect(url_for("admin.sequence", sequence_id=sequence_id), code=303)


def _audit_change(
    session: Session, seq: Sequence, action: str, before: dict[str, Any], after: dict[str, Any]
) -> None:
    """The audit entry of a setting that changed; none for one saved unchanged."""
    if before != after:
        audit.record(
            session,
            actor=current_admin(),
            action=action,
            target=target_of(seq),
            before=before,
            after=after,
        )


STATUS_ACTIONS = ("activate", "pause", "resume")


@bp.post("/sequences/<int:sequence_id>/status")
@editor_required
def sequence_status(sequence_id: int) -> ResponseReturnValue:
    """Activate a draft sequence, pause an active one, resume a paused one."""
    action = request.form.get("action", "")
    if not ButtonForm().validate_on_submit() or action not in STATUS_ACTIONS:
        abort(400)
    try:
        with db.transaction() as session:
            seq = sequence_or_404(session, sequence_id)
            before = seq.status.value
            if action == "activate":
                catalogue.activate(session, seq)
            elif action == "pause":
                pausing.pause_sequence(session, seq, clock.now(), by=current_admin().email)
            else:
                pausing.resume_sequence(session, seq, clock.now(), by=current_admin().email)
            audit.record(
                session,
                actor=current_admin(),
                action=f"sequence.{action}",
                target=target_of(seq),
                before={"status": before},
                after={"status": seq.status.value},
            )
            now = seq.status.value
    except (CatalogueError, ActionRefused) as exc:
        flash(exc.message if isinstance(exc, CatalogueError) else str(exc), "error")
    else:
        flash(f"The sequence is {now}.", "info")
    return redirect(url_for("admin.sequence_settings", sequence_id=sequence_id), code=303)


@bp.post("/sequences/<int:sequence_id>/default")
@editor_required
def sequence_default(sequence_id: int) -> ResponseReturnValue:
    """Make this the signup page's sequence (the only default)."""
    if not ButtonForm().validate_on_submit():
        abort(400)
    try:
        with db.transaction() as session:
            seq = sequence_or_404(session, sequence_id)
            previous = catalogue.make_default(session, seq)
            audit.record(
                session,
                actor=current_admin(),
                action="sequence.default",
                target=target_of(seq),
                before={"default": previous},
                after={"default": seq.slug},
            )
    except CatalogueError as exc:
        flash(exc.message, "error")
    else:
        flash("This is now the signup page's sequence.", "info")
    return redirect(url_for("admin.sequence", sequence_id=sequence_id), code=303)


@bp.route("/sequences/<int:sequence_id>/test-send", methods=["GET", "POST"])
@editor_required
def sequence_test_send(sequence_id: int) -> ResponseReturnValue:
    """Send one part, as it stands in the editor, to any address, marked [Test]."""
    rt = runtime()
    with db.session() as session:
        seq = sequence_or_404(session, sequence_id)
        steps = editor_view(session, seq).steps
        form = TestSendForm()
        form.step.choices = [
            SelectChoice(step["key"], f"Part {n}: {step['subject']}")
            for n, step in enumerate(steps, 1)
        ]
        if request.method == "GET" and request.args.get("step"):
            form.step.data = request.args["step"]
        context = {"sequence": seq}
        if not steps:
            form.form_errors.append("This sequence has no parts yet.")
            return answer("admin/sequences/test_send.html", form, **context)
        if not form.validate_on_submit():
            return answer("admin/sequences/test_send.html", form, **context)
        keys = [step["key"] for step in steps]
        position = keys.index(form.step.data) + 1
        try:
            mail = send_test.build_step_test_mail(
                rt.composer,
                form.email.data or "",
                seq,
                StepFields.of(steps[position - 1]),
                clock.now(),
                position=position,
                total=len(steps),
                first_name=form.first_name.data or None,
            )
        except send_test.TestSendError as exc:
            field, _, message = str(exc).partition(": ")
            target = {"email": form.email, "first_name": form.first_name}.get(field)
            if target is None:
                form.step.errors.append(str(exc))
            else:
                target.errors.append(message)
            return answer("admin/sequences/test_send.html", form, **context)
    try:
        send_test.send_test_mails(rt.settings, [mail])
    except SendError as exc:
        form.form_errors.append(f"The mail server did not accept the test mail: {exc}")
        return answer("admin/sequences/test_send.html", form, **context)
    with db.transaction() as session:
        audit.record(
            session,
            actor=current_admin(),
            action="sequence.test_send",
            target=target_of(seq),
            after={"part": position, "to": mail.mail.recipients[0], "subject": mail.subject},
        )
    flash(f"Part {position} was sent to {mail.mail.recipients[0]} as “{mail.subject}”.", "info")
    return redirect(
        url_for("admin.sequence_test_send", sequence_id=sequence_id, step=form.step.data),
        code=303,
    )
