"""The subscribers pages: the table, the export, a person's timeline and the actions on them.

Thin: each view parses, calls one function of the audience room (directory, timeline,
erasure, subscriptions) and records what an admin changed or took out with the audit log,
in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

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
from newsletter.audience import directory, erasure, subscriptions, timeline
from newsletter.db import db
from newsletter.models import Admin, SubscriberStatus
from newsletter.web.admin import bp
from newsletter.web.admin.access import current_admin, editor_required
from newsletter.web.admin.forms import ButtonForm
from newsletter.web.admin.people_forms import EraseForm


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


@bp.get("/subscribers/<int:subscriber_id>")
@editor_required
def subscriber(subscriber_id: int) -> ResponseReturnValue:
    """A person's timeline, the sentences that explain it, and the actions."""
    with db.session() as session:
        story = timeline.story(session, subscriber_id, clock.now())
    if story is None:
        abort(404)
    return render_template(
        "admin/subscriber.html",
        story=story,
        person=story.subscriber,
        form=ButtonForm(),
        local_time=timeline.local_time,
    )


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
