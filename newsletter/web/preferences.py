"""The reader's preferences page, reached from every mail by a signed link (no account).

A GET only shows (mail scanners open every link); every change is a POST with a CSRF token,
made by `audience/preferences.py` with the admin's own moves. A refusal is shown beside its
field and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NoReturn
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.audience import erasure, subscriptions
from newsletter.audience import preferences as prefs
from newsletter.db import db
from newsletter.runtime import runtime
from newsletter.schedule import known_time_zones, valid_time_zone
from newsletter.tasks import kick
from newsletter.tokens import TokenError
from newsletter.web.defences import limit_per_ip_and_address
from newsletter.web.forms import (
    ButtonForm,
    CourseForm,
    LeavingReasonForm,
    SequenceForm,
    TimingForm,
)

bp = Blueprint("preferences", __name__, url_prefix="/preferences")

# A reader looks and changes a few things now and then; a script working through links, or
# hammering one, is cut off (a 429 page). Per link: the token names one reader.
LIMIT_PER_IP = "120 per minute; 1200 per hour"
LIMIT_PER_LINK = "60 per minute; 300 per hour"


def _link() -> str:
    return str((request.view_args or {}).get("token", ""))[:500]


_limited = limit_per_ip_and_address(
    LIMIT_PER_IP, LIMIT_PER_LINK, scope="preferences", address=_link
)

# What a page says after a change; keyed, so nothing from the query string is shown.
DONE = {
    "timing": "Saved: your next part moves to the new time.",
    "paused": "Paused: nothing more comes until you resume.",
    "resumed": "Resumed.",
    "restarted": "Restarted: part 1 is on its way.",
    "joined": "Done: part 1 of your new series is on its way.",
}
GONE = "This link names nobody any more: their data was deleted."
WINDOW_HOUR = ""
RESUME_MODES = ("left-off", "catch-up")  # the send-hour choice "when the series' window opens"


def _not_found(message: str = "This preferences link is not valid.") -> NoReturn:
    """Stop with a page that says the link did not work (404): nothing was changed."""
    page = render_template("message.html", title="That link did not work", message=message)
    abort(Response(page, status=404))


def _reader(token: str) -> int:
    """The subscriber a preferences token names; a forged or cross-purpose token is a 404."""
    try:
        return runtime().tokens.read_preferences(token)
    except TokenError:
        _not_found()


def _hours() -> list[tuple[str, str]]:
    return [(WINDOW_HOUR, "When the series sends")] + [(str(h), f"{h:02d}:00") for h in range(24)]


def _page(
    token: str,
    subscriber_id: int,
    errors: dict[str, str] | None = None,
    timing: TimingForm | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    with db.session() as session:
        view = prefs.overview(session, subscriber_id)
    if view is None:
        _not_found(GONE)
    if timing is None:
        timing = TimingForm(
            time_zone=view.time_zone,
            send_hour=WINDOW_HOUR if view.send_hour is None else str(view.send_hour),
        )
    timing.time_zone.choices = sorted(known_time_zones())
    timing.send_hour.choices = _hours()
    joining = SequenceForm()
    joining.sequence.choices = [(str(i), title) for i, title in view.others]
    zone = ZoneInfo(valid_time_zone(view.time_zone))
    page = render_template(
        "preferences.html",
        token=token,
        view=view,
        timing=timing,
        course=CourseForm(),
        joining=joining,
        button=ButtonForm(),
        errors=errors or {},
        done=DONE.get(request.args.get("done", "")),
        local=lambda when: when.astimezone(zone).strftime("%a %d %b, %H:%M"),
    )
    return page, status


@bp.get("/<token>")
@_limited
def page(token: str) -> ResponseReturnValue:
    """The reader's settings, series and choices; showing it changes nothing."""
    return _page(token, _reader(token))


def _act(
    token: str, subscriber_id: int, change: Callable[[Session], None], done: str, field: str
) -> ResponseReturnValue:
    """Make a change in one transaction; refused, re-show the page with the reason."""
    try:
        with db.transaction() as session:
            change(session)
    except prefs.PreferenceRefused as exc:
        key = field if exc.field == "enrollment" else exc.field
        return _page(token, subscriber_id, {key: str(exc)}, status=400)
    kick()
    return redirect(url_for("preferences.page", token=token, done=done), code=303)


def _course_change(token: str, done: str, move: Callable[..., None]) -> ResponseReturnValue:
    """Pause, resume or restart one of the reader's series (the form names which)."""
    subscriber_id = _reader(token)
    form = CourseForm()
    if not form.validate_on_submit():
        abort(400)
    value = form.enrollment.data or ""
    if not value.isdigit():
        refused = {"form": "That is not one of your series."}
        return _page(token, subscriber_id, refused, None, 400)
    enrollment_id = int(value)
    day = runtime().settings.drip_day_seconds

    def change(session: Session) -> None:
        move(session, subscriber_id, enrollment_id, clock.now(), day, form.mode.data or "")

    return _act(token, subscriber_id, change, done, f"enrollment-{enrollment_id}")


@bp.post("/<token>/timing")
@_limited
def timing(token: str) -> ResponseReturnValue:
    """Set the time zone and the preferred send hour; the waiting part moves at once."""
    subscriber_id = _reader(token)
    form = TimingForm()
    if not form.validate_on_submit():
        abort(400)
    zone_name = form.time_zone.data or ""
    hour_text = form.send_hour.data or WINDOW_HOUR
    if hour_text != WINDOW_HOUR and not hour_text.isdigit():
        refused = {"send_hour": "Choose an hour from the list."}
        return _page(token, subscriber_id, refused, form, 400)
    hour = None if hour_text == WINDOW_HOUR else int(hour_text)
    day = runtime().settings.drip_day_seconds
    try:
        with db.transaction() as session:
            prefs.set_timing(session, subscriber_id, zone_name, hour, clock.now(), day)
    except prefs.PreferenceRefused as exc:
        return _page(token, subscriber_id, {exc.field: str(exc)}, form, 400)
    kick()
    return redirect(url_for("preferences.page", token=token, done="timing"), code=303)


@bp.post("/<token>/pause")
@_limited
def pause(token: str) -> ResponseReturnValue:
    """Pause one series: its waiting part is held."""
    return _course_change(
        token, "paused", lambda s, sid, eid, now, day, mode: prefs.pause(s, sid, eid, now)
    )


@bp.post("/<token>/resume")
@_limited
def resume(token: str) -> ResponseReturnValue:
    """Resume one series, where the reader left off or catching up (`mode`)."""
    if request.form.get("mode") not in RESUME_MODES:
        refused = {"form": "Choose how to resume: where you left off, or catching up."}
        return _page(token, _reader(token), refused, None, 400)
    return _course_change(
        token,
        "resumed",
        lambda s, sid, eid, now, day, mode: prefs.resume(
            s, sid, eid, now, day, catch_up=mode == "catch-up"
        ),
    )


@bp.post("/<token>/restart")
@_limited
def restart(token: str) -> ResponseReturnValue:
    """Start one series over from part 1."""
    return _course_change(
        token, "restarted", lambda s, sid, eid, now, day, mode: prefs.restart(s, sid, eid, now, day)
    )


@bp.post("/<token>/sequence")
@_limited
def sequence(token: str) -> ResponseReturnValue:
    """Join another public series, or switch one of theirs (`leaving`) to it."""
    subscriber_id = _reader(token)
    form = SequenceForm()
    if not form.validate_on_submit():
        abort(400)
    chosen, leaving = form.sequence.data or "", form.leaving.data or ""
    if not chosen.isdigit() or (leaving and not leaving.isdigit()):
        refused = {"sequence": "Choose a series from the list."}
        return _page(token, subscriber_id, refused, None, 400)
    day = runtime().settings.drip_day_seconds

    def change(session: Session) -> None:
        prefs.join(
            session,
            subscriber_id,
            int(chosen),
            clock.now(),
            day,
            leaving=int(leaving) if leaving else None,
        )

    return _act(token, subscriber_id, change, "joined", "sequence")


@bp.post("/<token>/leave")
@_limited
def leave(token: str) -> ResponseReturnValue:
    """Unsubscribe (the same as the unsubscribe link), after any part on the wire."""
    subscriber_id = _reader(token)
    if not ButtonForm().validate_on_submit():
        abort(400)
    with db.transaction() as session:
        found = subscriptions.unsubscribe(session, subscriber_id, clock.now(), "preferences")
    if not found:
        _not_found(GONE)
    subscriptions.wait_while_mid_send(
        db.session, subscriber_id, clock.now, runtime().settings.unsubscribe_wait_seconds
    )
    # The page that asks why, as after the unsubscribe link (whose token it answers to).
    return render_template(
        "unsubscribed.html",
        form=LeavingReasonForm(),
        token=runtime().tokens.unsubscribe_token(subscriber_id),
    )


@bp.post("/<token>/data")
@_limited
def data(token: str) -> Response:
    """Everything held about the reader, as a JSON download (the admin's export)."""
    subscriber_id = _reader(token)
    if not ButtonForm().validate_on_submit():
        abort(400)
    with db.session() as session:
        found = erasure.personal_data(session, subscriber_id)
    if found is None or found["subscriber"]["erased_at"] is not None:
        _not_found(GONE)
    response = Response(json.dumps(found, indent=2), mimetype="application/json")
    response.headers["Content-Disposition"] = 'attachment; filename="my-data.json"'
    return response


@bp.get("/<token>/delete")
@_limited
def delete_page(token: str) -> ResponseReturnValue:
    """Ask for the confirming click; showing it deletes nothing."""
    subscriber_id = _reader(token)
    with db.session() as session:
        if prefs.overview(session, subscriber_id) is None:
            _not_found(GONE)
    return render_template("delete.html", token=token, button=ButtonForm())


@bp.post("/<token>/delete")
@_limited
def delete(token: str) -> ResponseReturnValue:
    """Erase the reader (the admin's erase): their data gone, the address's hash suppressed."""
    subscriber_id = _reader(token)
    if not ButtonForm().validate_on_submit():
        abort(400)
    with db.transaction() as session:
        if prefs.overview(session, subscriber_id) is None:
            _not_found(GONE)
        erasure.erase(session, subscriber_id, clock.now())
    subscriptions.wait_while_mid_send(
        db.session, subscriber_id, clock.now, runtime().settings.unsubscribe_wait_seconds
    )
    return render_template(
        "message.html",
        title="You are deleted",
        message="Everything we held about you is gone; this address will never be mailed again.",
    )
