"""The CSV import pages: upload, column mapping with a preview, consent, progress and report.

The upload is streamed to the shared imports folder (audience/csv_import.receive); starting
queues the `import_subscribers` task, which a worker runs in batches. The web never reads a
whole file: the mapping page shows the header and the first rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import clock, tasks
from newsletter.admins import audit
from newsletter.audience import csv_import
from newsletter.db import db
from newsletter.extensions import csrf
from newsletter.models import Admin, ImportStatus, SubscriberImport
from newsletter.runtime import runtime
from newsletter.web.admin import bp
from newsletter.web.admin.access import current_admin, editor_required
from newsletter.web.admin.people_forms import MappingForm, UploadForm

log = logging.getLogger(__name__)

RECENT = 20
# Room for the form fields and multipart framing around the largest file.
UPLOAD_OVERHEAD = 64 * 1024


def _folder() -> Path:
    return csv_import.folder(runtime().settings.instance_dir)


def _me(session: Session) -> Admin:
    me = session.get(Admin, current_admin().id)
    assert me is not None
    return me


def _recent(session: Session) -> list[SubscriberImport]:
    return list(
        session.scalars(select(SubscriberImport).order_by(SubscriberImport.id.desc()).limit(RECENT))
    )


def _list(form: UploadForm, status: int = 200) -> ResponseReturnValue:
    with db.session() as session:
        recent = _recent(session)
    return render_template("admin/imports.html", form=form, recent=recent), status


@bp.get("/imports")
@editor_required
def imports() -> ResponseReturnValue:
    """Recent imports and the upload form."""
    return _list(UploadForm())


# Exempt from the app-wide check only so that the size limit below is raised before the body
# is read; the same check then runs here (a missing or forged token gets the same answer).
@csrf.exempt
@bp.post("/imports")
@editor_required
def imports_upload() -> ResponseReturnValue:
    """Store an uploaded file and go on to its mapping page."""
    request.max_content_length = csv_import.MAX_UPLOAD_BYTES + UPLOAD_OVERHEAD
    csrf.protect()
    form = UploadForm()
    if not form.validate_on_submit():
        return _list(form, status=400)
    upload = form.file.data
    try:
        with db.transaction() as session:
            entry = csv_import.receive(
                session,
                upload.stream,
                upload.filename or "upload.csv",
                _folder(),
                current_admin().email,
                clock.now(),
            )
            audit.record(
                session,
                actor=_me(session),
                action="import.upload",
                target=f"import:{entry.id}",
                after={"file": entry.filename, "bytes": entry.size_bytes},
            )
            import_id = entry.id
    except csv_import.ImportFormError as exc:
        form.file.errors.append(str(exc))
        return _list(form, status=400)
    return redirect(url_for("admin.import_detail", import_id=import_id), code=303)


def _detail(entry: SubscriberImport, form: MappingForm, status: int = 200) -> ResponseReturnValue:
    preview = []
    if entry.status is ImportStatus.UPLOADED:
        preview = csv_import.preview(entry, _folder())
    return render_template(
        "admin/import.html",
        entry=entry,
        form=form,
        preview=preview,
        labels=csv_import.FIELD_LABELS,
        running=entry.status in (ImportStatus.QUEUED, ImportStatus.RUNNING),
    ), status


def _load(import_id: int) -> SubscriberImport:
    with db.session() as session:
        entry = session.get(SubscriberImport, import_id)
    if entry is None:
        abort(404)
    return entry


@bp.get("/imports/<int:import_id>")
@editor_required
def import_detail(import_id: int) -> ResponseReturnValue:
    """The mapping form and preview of an uploaded file, or the progress and report."""
    entry = _load(import_id)
    form = MappingForm()
    form.offer(entry.header)
    if entry.status is ImportStatus.UPLOADED:
        for name, index in entry.mapping.items():
            getattr(form, name).data = "" if index is None else str(index)
    return _detail(entry, form)


@bp.post("/imports/<int:import_id>/start")
@editor_required
def import_start(import_id: int) -> ResponseReturnValue:
    """Save the mapping and the consent choice, and queue the import for a worker."""
    entry = _load(import_id)
    form = MappingForm()
    form.offer(entry.header)
    if not form.validate_on_submit():
        return _detail(entry, form, status=400)
    try:
        with db.transaction() as session:
            attached = session.get(SubscriberImport, import_id, with_for_update=True)
            assert attached is not None
            csv_import.configure(
                session,
                attached,
                {name: getattr(form, name).data or "" for name in csv_import.FIELDS},
                form.consent.data or "",
            )
            audit.record(
                session,
                actor=_me(session),
                action="import.start",
                target=f"import:{import_id}",
                after={"mapping": attached.mapping, "consent": form.consent.data},
            )
    except csv_import.ImportFormError as exc:
        getattr(form, exc.field).errors.append(str(exc))
        return _detail(entry, form, status=400)
    try:
        tasks.import_subscribers.delay(import_id)
    except Exception:  # noqa: BLE001 - any broker failure: say so, and let them start again
        log.exception("import %d could not be queued", import_id)
        with db.transaction() as session:
            csv_import.unqueue(session, import_id)
        flash("The task queue cannot be reached, so the import did not start. Try again.", "error")
        return redirect(url_for("admin.import_detail", import_id=import_id), code=303)
    flash("The import has started; this page shows its progress.", "info")
    return redirect(url_for("admin.import_detail", import_id=import_id), code=303)
