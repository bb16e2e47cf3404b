"""The sequence pages: the list, a new sequence, importing an article, settings, test sends.

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
from werkzeug.datastructures import FileStorage
from wtforms.fields.choices import SelectChoice

from newsletter import clock
from newsletter.admins import audit
from newsletter.content import catalogue, drafts, pausing, proposal, send_test
from newsletter.content.article import ArticleError
from newsletter.content.catalogue import CatalogueError
from newsletter.content.drafts import DraftError
from newsletter.content.editor import editor_view
from newsletter.content.preview import StepFields
from newsletter.content.sequences import slugify
from newsletter.db import db
from newsletter.delivery.holds import ActionRefused
from newsletter.mail.transport import SendError
from newsletter.models import Sequence
from newsletter.runtime import runtime
from newsletter.web.admin import bp
from newsletter.web.admin.access import current_admin, editor_required
from newsletter.web.admin.forms import ButtonForm
from newsletter.web.admin.sequence_forms import (
    ImportForm,
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


def _answer(template: str, form: Any, **context: Any) -> ResponseReturnValue:
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
    return _answer("admin/sequences/new.html", form)


# -- importing an article ------------------------------------------------------------------------


def _uploaded(form: ImportForm) -> str | None:
    """The uploaded file as text, into the form's text field; None (with the error) if bad."""
    upload = form.article.data
    if not isinstance(upload, FileStorage) or not upload.filename:
        return str(form.text.data or "")
    data: bytes = upload.read(proposal.MAX_ARTICLE_CHARS * 4 + 1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        form.article.errors.append("The file is not UTF-8 text: save it as UTF-8 and upload it.")
        return None
    if upload.filename.lower().endswith((".md", ".markdown")):
        form.markdown.data = True
    form.text.data = text
    return text


@bp.route("/sequences/import", methods=["GET", "POST"])
@editor_required
def sequence_import() -> ResponseReturnValue:
    """Upload or paste an article, see its proposed parts, change their number, save."""
    form = ImportForm()
    with db.session() as session:
        targets = proposal.draft_targets(session)
    form.into.choices = [SelectChoice(0, "Choose a sequence"), *(SelectChoice(*t) for t in targets)]
    shown: proposal.Proposal | None = None
    if not form.validate_on_submit():
        return _answer("admin/sequences/import.html", form, proposal=None)
    text = _uploaded(form)
    if text is not None:
        try:
            shown = proposal.propose(
                text,
                markdown=bool(form.markdown.data),
                parts=form.parts.data,
                title=form.title.data,
            )
        except ArticleError as exc:
            # The form bounds the parts and the title already: what is left is the article's.
            form.text.errors.append(str(exc))
    if shown is None:
        return _answer("admin/sequences/import.html", form, proposal=None)
    form.title.data = form.title.data or shown.title
    form.slug.data = form.slug.data or slugify(shown.title)
    action = request.form.get("action")
    if action == "draft":
        return _save_as_draft(form, text or "", shown)
    if action != "save":
        return render_template("admin/sequences/import.html", form=form, proposal=shown)
    with db.transaction() as session:
        problem = proposal.slug_problem(session, form.slug.data)
        if problem is None:
            report = proposal.save_new(
                session,
                text or "",
                slug=form.slug.data,
                markdown=bool(form.markdown.data),
                parts=form.parts.data,
                title=form.title.data,
            )
            audit.record(
                session,
                actor=current_admin(),
                action="sequence.import",
                target=target_of(report.sequence),
                after={
                    "title": report.sequence.title,
                    "slug": report.sequence.slug,
                    "parts": report.parts,
                },
            )
            sequence_id = report.sequence.id
    if problem is not None:
        form.slug.errors.append(problem)
        return _answer("admin/sequences/import.html", form, proposal=shown)
    flash(f"Imported as {report.parts} parts.", "info")
    if shown.links_without_url:
        flash(
            f"{shown.links_without_url} “Keep reading” links have no URL yet: fill them in "
            "before publishing.",
            "warning",
        )
    return redirect(url_for("admin.sequence", sequence_id=sequence_id), code=303)


def _save_as_draft(form: ImportForm, text: str, shown: proposal.Proposal) -> ResponseReturnValue:
    """The article as the draft of the chosen sequence; its editor shows the draft."""
    if not form.into.data:
        form.into.errors.append("Choose the sequence whose draft the article becomes.")
        return _answer("admin/sequences/import.html", form, proposal=shown)
    with db.transaction() as session:
        sequence = sequence_or_404(session, form.into.data)
        replaced = drafts.open_draft(session, sequence) is not None
        parts = proposal.save_as_draft(
            session, sequence, text, markdown=bool(form.markdown.data), parts=form.parts.data
        )
        audit.record(
            session,
            actor=current_admin(),
            action="sequence.import_draft",
            target=target_of(sequence),
            after={"parts": parts, "replaced_draft": replaced},
        )
        sequence_id, title = sequence.id, sequence.title
    flash(
        f"The article is the draft of “{title}” now, in {parts} parts"
        + (" (it replaced the draft's earlier edits)" if replaced else "")
        + ": look at each part, then publish the draft with its dry run.",
        "info",
    )
    return redirect(url_for("admin.sequence", sequence_id=sequence_id), code=303)


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
            return _answer("admin/sequences/settings.html", form, **context)
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
        return _answer("admin/sequences/settings.html", form, **context)
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
            return _answer("admin/sequences/test_send.html", form, **context)
        if not form.validate_on_submit():
            return _answer("admin/sequences/test_send.html", form, **context)
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
            return _answer("admin/sequences/test_send.html", form, **context)
    try:
        send_test.send_test_mails(rt.settings, [mail])
    except SendError as exc:
        form.form_errors.append(f"The mail server did not accept the test mail: {exc}")
        return _answer("admin/sequences/test_send.html", form, **context)
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
