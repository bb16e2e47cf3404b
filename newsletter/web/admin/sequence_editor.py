"""The step editor with its live preview; adding, removing and reordering parts; publishing
with its dry run; discarding the draft.

Every edit goes to the sequence's draft (content/drafts.py) and reaches nobody until it is
published. The preview renders the real mail (content/preview.py): of the saved draft on a
GET, of the form's unsaved fields on a POST (which saves nothing), into sandboxed frames.
"""

from __future__ import annotations

from typing import Any

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session
from wtforms import Field

from newsletter.admins import audit
from newsletter.content import drafts, editor, publishing
from newsletter.content.drafts import DraftError
from newsletter.content.editor import EditorView, editor_view
from newsletter.content.preview import (
    Errors,
    Resource,
    StepFields,
    field_errors,
    preview_step,
    sample_labels,
)
from newsletter.content.publishing import PublishBusy
from newsletter.db import db
from newsletter.models import Sequence
from newsletter.runtime import runtime
from newsletter.web.admin import bp
from newsletter.web.admin.access import current_admin, editor_required
from newsletter.web.admin.forms import ButtonForm
from newsletter.web.admin.sequence_forms import StepForm
from newsletter.web.admin.sequences import sequence_or_404, target_of

MOVES = {"up": -1, "down": 1}


def _step_index(view: EditorView, key: str) -> int:
    index = view.index_of(key)
    if index is None:
        abort(404)
    return index


def _sample() -> int:
    """The sample subscriber asked for: a whitelisted index, else the first."""
    value = request.values.get("sample", "0")
    return int(value) if value.isdigit() and int(value) < len(sample_labels()) else 0


# -- the form and the fields ---------------------------------------------------------------------


def _form_for(fields: StepFields, sample: int = 0) -> StepForm:
    data: dict[str, Any] = fields.as_dict() | {"sample": sample}
    data["teaser"] = data["teaser"] or ""
    data["resources_intro"] = data["resources_intro"] or ""
    return StepForm(formdata=None, data=data)


def _text(field: Field) -> str:
    return str(field.data or "").replace("\r\n", "\n").replace("\r", "\n")


def _fields_of(form: StepForm) -> tuple[StepFields, list[int]]:
    """The fields the form holds, and for each link kept, the form row it came from.

    A row left wholly empty is no link (the editor's blank row), so it is dropped.
    """
    rows: list[int] = []
    resources: list[Resource] = []
    for index, entry in enumerate(form.resources.entries):
        title, blurb, url = (
            str(entry[name].data or "").strip() for name in ("title", "blurb", "url")
        )
        if title or blurb or url:
            rows.append(index)
            resources.append(Resource(title, blurb, url))
    fields = StepFields(
        subject=str(form.subject.data or "").strip(),
        preheader=str(form.preheader.data or "").strip(),
        day_offset=int(form.day_offset.data or 0),
        body_md=_text(form.body_md),
        teaser=str(form.teaser.data or "").strip() or None,
        resources=tuple(resources),
        resources_intro=_text(form.resources_intro).strip() or None,
    )
    return fields, rows


def _show_errors(form: StepForm, errors: Errors, rows: list[int]) -> None:
    """Put each error beside its field; one the form has no field for goes on top."""
    for name, messages in errors.items():
        field: Field | None = getattr(form, name, None)
        if name.startswith("resources-"):
            _, index, part = name.split("-", 2)
            field = form.resources.entries[rows[int(index)]][part]
        if field is None or name == "resources":
            form.form_errors.extend(messages)
            continue
        field.errors = [*field.errors, *messages]


def _editor_page(
    seq: Sequence, view: EditorView, index: int, form: StepForm, status: int = 200
) -> ResponseReturnValue:
    warnings = editor.unfilled_links([view.steps[index]])
    key = view.steps[index]["key"]
    return (
        render_template(
            "admin/sequences/step.html",
            sequence=seq,
            view=view,
            index=index,
            key=key,
            form=form,
            warnings=warnings,
            preview_url=url_for(
                "admin.step_preview", sequence_id=seq.id, key=key, sample=form.sample.data or 0
            ),
        ),
        status,
    )


# -- the step editor -----------------------------------------------------------------------------


@bp.get("/sequences/<int:sequence_id>/steps/<key>")
@editor_required
def step(sequence_id: int, key: str) -> ResponseReturnValue:
    """The editor of one part, with its previews at phone and desktop width."""
    with db.session() as session:
        seq = sequence_or_404(session, sequence_id)
        view = editor_view(session, seq)
        index = _step_index(view, key)
        return _editor_page(seq, view, index, _form_for(view.fields(index), _sample()))


@bp.post("/sequences/<int:sequence_id>/steps/<key>")
@editor_required
def step_save(sequence_id: int, key: str) -> ResponseReturnValue:
    """Save the part into the draft, or add or remove a link row (which saves nothing)."""
    form = StepForm()
    action = request.form.get("action", "save")
    with db.session() as session:
        seq = sequence_or_404(session, sequence_id)
        view = editor_view(session, seq)
        index = _step_index(view, key)
        if not form.validate_on_submit():
            return _editor_page(seq, view, index, form, 400)
        fields, rows = _fields_of(form)
        if action == "add_link":
            form.resources.append_entry()
            return _editor_page(seq, view, index, form)
        if action.startswith("remove_link:"):
            kept = [
                entry.data
                for number, entry in enumerate(form.resources.entries)
                if str(number) != action.partition(":")[2]
            ]
            changed = _form_for(fields, form.sample.data or 0)
            changed.resources.entries.clear()
            changed.resources.last_index = -1
            for data in kept:
                changed.resources.append_entry(data)
            return _editor_page(seq, view, index, changed)
        errors = field_errors(fields)
        if errors:
            _show_errors(form, errors, rows)
            return _editor_page(seq, view, index, form, 400)
    before = {name: view.steps[index].get(name) for name in fields.as_dict()}
    after = fields.as_dict()
    changed_names = [name for name in after if before[name] != after[name]]
    if changed_names:
        try:
            with db.transaction() as session:
                # Its own name: after a rollback the page is drawn from `seq`, loaded above.
                live = sequence_or_404(session, sequence_id)
                draft = drafts.draft_of(session, live)
                drafts.update_step(session, draft, key, **after)
                audit.record(
                    session,
                    actor=current_admin(),
                    action="sequence.step_update",
                    target=f"{target_of(live)}/step:{key}",
                    before={name: before[name] for name in changed_names},
                    after={name: after[name] for name in changed_names},
                )
        except DraftError as exc:
            _show_errors(form, {exc.field: [exc.message]}, rows)
            return _editor_page(seq, view, index, form, 400)
        flash("Saved in the draft: nobody gets it until you publish.", "info")
    return redirect(
        url_for("admin.step", sequence_id=sequence_id, key=key, sample=form.sample.data or 0),
        code=303,
    )


@bp.route("/sequences/<int:sequence_id>/steps/<key>/preview", methods=["GET", "POST"])
@editor_required
def step_preview(sequence_id: int, key: str) -> ResponseReturnValue:
    """The part as the real mail: the draft's on a GET, the form's unsaved text on a POST.

    Shown in a sandboxed frame of the editor (web/security.py gives it a framing CSP that
    runs no script). Problems come back as a page listing them, never as an error status.
    """
    with db.session() as session:
        seq = sequence_or_404(session, sequence_id)
        view = editor_view(session, seq)
        index = _step_index(view, key)
        if request.method == "POST":
            form = StepForm()
            if not form.validate_on_submit():
                problems = [
                    m for messages in form.errors.values() for m in messages if isinstance(m, str)
                ]
                return render_template("admin/sequences/preview_problems.html", problems=problems)
            fields, _ = _fields_of(form)
            sample = int(form.sample.data or 0)
        else:
            fields, sample = view.fields(index), _sample()
        shown = preview_step(
            runtime().composer,
            seq,
            fields,
            position=index + 1,
            total=len(view.steps),
            sample=sample,
        )
    if not shown.ok:
        problems = [f"{name}: {m}" for name, messages in shown.errors.items() for m in messages]
        return render_template("admin/sequences/preview_problems.html", problems=problems)
    return Response(shown.html, mimetype="text/html")


# -- adding, removing, reordering ----------------------------------------------------------------


def _button_or_400() -> None:
    if not ButtonForm().validate_on_submit():
        abort(400)


def _back(sequence_id: int, key: str | None = None) -> ResponseReturnValue:
    anchor = f"step-{key}" if key else None
    return redirect(url_for("admin.sequence", sequence_id=sequence_id, _anchor=anchor), code=303)


@bp.post("/sequences/<int:sequence_id>/steps/<key>/move")
@editor_required
def step_move(sequence_id: int, key: str) -> ResponseReturnValue:
    """Move a part one place up or down (a button each: no dragging needed)."""
    _button_or_400()
    direction = request.form.get("direction", "")
    if direction not in MOVES:
        abort(400)
    with db.transaction() as session:
        seq = sequence_or_404(session, sequence_id)
        view = editor_view(session, seq)
        index = _step_index(view, key)
        new_index = index + MOVES[direction]
        if not 0 <= new_index < len(view.steps):
            flash("That part cannot move further.", "error")
            return _back(sequence_id, key)
        draft = drafts.draft_of(session, seq)
        drafts.move_step(session, draft, key, new_index)
        # The days belong to the places, not to the texts: the part that moves takes the day
        # of its new place, so the series keeps its rhythm and its days stay in order.
        for place, moved in enumerate(drafts.draft_steps(draft)):
            if moved["day_offset"] != view.steps[place]["day_offset"]:
                day = view.steps[place]["day_offset"]
                drafts.update_step(session, draft, moved["key"], day_offset=day)
        audit.record(
            session,
            actor=current_admin(),
            action="sequence.step_move",
            target=f"{target_of(seq)}/step:{key}",
            before={"part": index + 1},
            after={"part": new_index + 1},
        )
    flash(f"Part {index + 1} is now part {new_index + 1} (in the draft).", "info")
    return _back(sequence_id, key)


@bp.post("/sequences/<int:sequence_id>/steps/<key>/remove")
@editor_required
def step_remove(sequence_id: int, key: str) -> ResponseReturnValue:
    """Take a part out of the draft (people waiting on it move on when it is published)."""
    _button_or_400()
    try:
        with db.transaction() as session:
            seq = sequence_or_404(session, sequence_id)
            view = editor_view(session, seq)
            index = _step_index(view, key)
            drafts.remove_step(session, drafts.draft_of(session, seq), key)
            audit.record(
                session,
                actor=current_admin(),
                action="sequence.step_remove",
                target=f"{target_of(seq)}/step:{key}",
                before={"part": index + 1, **StepFields.of(view.steps[index]).as_dict()},
            )
    except DraftError as exc:
        flash(exc.message, "error")
        return _back(sequence_id)
    flash(f"Part {index + 1} is removed from the draft.", "info")
    return _back(sequence_id)


@bp.post("/sequences/<int:sequence_id>/steps/add")
@editor_required
def step_add(sequence_id: int) -> ResponseReturnValue:
    """Add a part after another (or first) in the draft, and open it in the editor."""
    _button_or_400()
    after = request.form.get("after") or None
    with db.transaction() as session:
        seq = sequence_or_404(session, sequence_id)
        view = editor_view(session, seq)
        position = 1 if after is None else _step_index(view, after) + 2
        new_key = drafts.add_step(session, drafts.draft_of(session, seq), after)
        audit.record(
            session,
            actor=current_admin(),
            action="sequence.step_add",
            target=f"{target_of(seq)}/step:{new_key}",
            after={"part": position},
        )
    flash(f"Part {position} is added to the draft: write it here.", "info")
    return redirect(url_for("admin.step", sequence_id=sequence_id, key=new_key), code=303)


# -- publishing and discarding -------------------------------------------------------------------


def _publish_page(
    session: Session, seq: Sequence, *, refused: str | None = None, status: int = 200
) -> ResponseReturnValue:
    view = editor_view(session, seq)
    plan = None
    if view.draft is not None:
        plan = publishing.plan(session, seq, day_seconds=runtime().settings.drip_day_seconds)
    return (
        render_template(
            "admin/sequences/publish.html",
            sequence=seq,
            view=view,
            plan=plan,
            sentences=list(plan.sentences()) if plan else [],
            missing=editor.unfilled_links(view.steps),
            refused=refused,
            button=ButtonForm(),
        ),
        status,
    )


@bp.get("/sequences/<int:sequence_id>/publish")
@editor_required
def sequence_publish_page(sequence_id: int) -> ResponseReturnValue:
    """The dry run of publishing the draft: who moves where, and the promises it keeps."""
    with db.session() as session:
        return _publish_page(session, sequence_or_404(session, sequence_id))


@bp.post("/sequences/<int:sequence_id>/publish")
@editor_required
def sequence_publish(sequence_id: int) -> ResponseReturnValue:
    """Publish the draft: the live steps change and every open enrollment moves forward."""
    _button_or_400()
    admin = current_admin()
    try:
        with db.transaction() as session:
            seq = sequence_or_404(session, sequence_id)
            before = drafts.published(session, seq)
            version = editor.publish(
                session, seq, admin.email, day_seconds=runtime().settings.drip_day_seconds
            )
            audit.record(
                session,
                actor=admin,
                action="sequence.publish",
                target=target_of(seq),
                before={"version": before.number if before else None},
                after={
                    "version": version.number,
                    "dry_run": (version.summary or {}).get("sentences"),
                },
            )
            number = version.number
    except (DraftError, PublishBusy) as exc:
        message = exc.message if isinstance(exc, DraftError) else f"Not published: {exc}."
        with db.session() as session:
            status = 409 if isinstance(exc, PublishBusy) else 400
            return _publish_page(
                session, sequence_or_404(session, sequence_id), refused=message, status=status
            )
    flash(f"Version {number} is published.", "info")
    return _back(sequence_id)


@bp.post("/sequences/<int:sequence_id>/discard")
@editor_required
def sequence_discard(sequence_id: int) -> ResponseReturnValue:
    """Throw the draft away; the published steps stay as they are."""
    _button_or_400()
    with db.transaction() as session:
        seq = sequence_or_404(session, sequence_id)
        draft = drafts.open_draft(session, seq)
        if draft is not None:
            audit.record(
                session,
                actor=current_admin(),
                action="sequence.discard",
                target=target_of(seq),
                before={"version": draft.number, "steps": len(drafts.draft_steps(draft))},
            )
            drafts.discard_draft(session, seq)
    flash("The draft is discarded.", "info")
    return _back(sequence_id)
