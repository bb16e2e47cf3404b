"""Importing an article on the web: upload or paste it, see the proposed parts with their
reading time and subject, change their number, and save it as a new sequence or as the draft
of an existing one (`content/proposal.py`, the same split as `flask import-article`).

A thin view: bad input comes back as the same page with the error beside its field (400),
having changed nothing; a save is one transaction with its audit entry.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage
from wtforms.fields.choices import SelectChoice

from newsletter.admins import audit
from newsletter.content import drafts, proposal
from newsletter.content.article import ArticleError
from newsletter.content.sequences import slugify
from newsletter.db import db
from newsletter.web.admin import bp
from newsletter.web.admin.access import current_admin, editor_required
from newsletter.web.admin.sequence_forms import ImportForm
from newsletter.web.admin.sequences import answer, sequence_or_404, target_of


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
        return answer("admin/sequences/import.html", form, proposal=None)
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
        return answer("admin/sequences/import.html", form, proposal=None)
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
        return answer("admin/sequences/import.html", form, proposal=shown)
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
        return answer("admin/sequences/import.html", form, proposal=shown)
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
