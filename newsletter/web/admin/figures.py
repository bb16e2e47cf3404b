"""The dashboard and each sequence's funnel: the cached figures of `audience/figures.py`,
drawn as SVG charts beside tables of the same numbers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from flask import abort, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from newsletter import clock, tasks
from newsletter.audience import figures
from newsletter.content.results import GONE, PERIODS, SequenceResults
from newsletter.db import db
from newsletter.delivery import heartbeat, status
from newsletter.delivery.flow import Pause
from newsletter.models import EnrollmentStatus, Sequence
from newsletter.runtime import runtime
from newsletter.web import charts
from newsletter.web.admin import bp
from newsletter.web.admin.access import editor_required

log = logging.getLogger(__name__)

# A dispatch tick this many intervals late means the beat (or its worker) is not running.
LATE_TICKS = 3
PERIOD_LABELS = {
    period: "All time" if days is None else f"The last {days} days"
    for period, days in PERIODS.items()
}
DEFAULT_PERIOD = "30"


@dataclass(frozen=True)
class Signal:
    """One light of the dashboard: ok, warning or danger, a title and a sentence."""

    level: str
    title: str
    detail: str


@bp.app_template_global()
def time_ago(age: timedelta) -> str:
    """An age as a person reads it: "12 s", "4 min", "3 h", "2 days"."""
    seconds = int(age.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _sending(brake: status.Brake, now: datetime, unknown: bool) -> Signal:
    if brake.trip is not None:
        return Signal(
            "danger",
            "Sending is held by the bounce breaker",
            f"Since {brake.trip.tripped_at:%Y-%m-%d %H:%M} UTC: {brake.trip.reason}. "
            "Check the relay and the list, then resume with flask --app web resume.",
        )
    if brake.pause is not None:
        left = max(0.0, brake.pause.until - now.timestamp())
        return Signal(
            "warning",
            "Sending is paused",
            f"For {left:.0f} s more, then it resumes by itself: {brake.pause.reason}",
        )
    if unknown:
        return Signal(
            "warning",
            "Sending: the pause flag cannot be read",
            "The flow-control store (REDIS_URL) does not answer; workers send unthrottled.",
        )
    return Signal("ok", "Sending is running", "Neither the relay pause nor the breaker holds mail.")


def _tick(last: datetime | None, now: datetime, interval: float) -> Signal:
    if last is None:
        return Signal("danger", "never", "No dispatch tick has run: is the beat running?")
    age = now - last
    text = f"{time_ago(age)} ago, at {last:%H:%M:%S} UTC; one is due every {interval:g} s."
    if age.total_seconds() > LATE_TICKS * interval:
        return Signal("danger", f"{time_ago(age)} ago", text + " Is the beat running?")
    return Signal("ok", f"{time_ago(age)} ago", text)


def _pause() -> tuple[Pause | None, bool]:
    """The flow pause, and whether the store could not be asked."""
    try:
        return runtime().flow().pause(), False
    except redis.RedisError:
        return None, True


def _day_charts(counted: figures.DashboardFigures) -> list[charts.Chart]:
    first, last = counted.days[0].day, counted.days[-1].day
    span = f"from {first:%d %b} to {last:%d %b %Y} (UTC)"
    made = []
    for title, field in (
        ("Signups", "signups"),
        ("Confirmations", "confirmations"),
        ("Mails sent", "sent"),
    ):
        points = [(f"{d.day:%d %b}", int(getattr(d, field))) for d in counted.days]
        made.append(
            charts.columns(
                title,
                f"{title} per day {span}; the table below gives each day's number.",
                points,
                label_every=7,
                width=380,
                height=170,
            )
        )
    return made


@bp.get("/dashboard")
@editor_required
def dashboard() -> ResponseReturnValue:
    """The list, the engine and the last month at a glance."""
    now = clock.now()
    pause, unknown = _pause()
    with db.transaction() as session:
        cached = figures.dashboard(session, now)
        last_tick = heartbeat.last(session, heartbeat.DISPATCH)
        brake = status.brake(session, pause)
        sending = _sending(brake, now, unknown)
        sequences = session.execute(select(Sequence.id, Sequence.title).order_by(Sequence.id)).all()
    counted = cached.value
    states = charts.rows(
        "Subscribers by state",
        "How many subscribers are in each state; the table below gives the same numbers.",
        [(state.value, count) for state, count in counted.by_state.items()],
    )
    return render_template(
        "admin/dashboard.html",
        cached=cached,
        now=now,
        figures=counted,
        health=counted.health,
        sending=sending,
        tick=_tick(last_tick, now, runtime().settings.dispatch_interval_seconds),
        states_chart=states,
        day_charts=_day_charts(counted),
        sequences=sequences,
        refresh_seconds=f"{figures.REFRESH_SECONDS:g}",
    )


def _funnel_chart(results: SequenceResults, label: str) -> charts.Chart:
    notes = [f"−{p.drop_off:.0%}" if p.drop_off else "" for p in results.parts]
    return charts.columns(
        f"Mails sent per part, {label.lower()}",
        "How many of the period's readers each part reached, with the drop-off from the "
        "part before above each bar; the table below gives every number.",
        [(f"Part {p.position}", p.sent) for p in results.parts],
        notes=notes,
    )


def _ask_recount(sequence_id: int, period: str) -> bool:
    """Queue a background count of a stale funnel; whether the queue took it."""
    try:
        tasks.recount_funnel.delay(sequence_id, period)
    except Exception:  # noqa: BLE001 - any broker failure: the page counts it itself instead
        log.warning("the funnel of sequence %d could not be queued for a recount", sequence_id)
        return False
    return True


@bp.get("/sequences/<int:sequence_id>/funnel")
@editor_required
def funnel(sequence_id: int) -> ResponseReturnValue:
    """Each part's sent, failed, skipped and to go, who left after it, and the drop-off."""
    asked = request.args.get("period", DEFAULT_PERIOD)
    # A whitelist: any other value is refused beside the field, and the default is shown.
    period, error = (
        (asked, None)
        if asked in PERIODS
        else (DEFAULT_PERIOD, "Choose one of the periods in the list.")
    )
    now = clock.now()
    with db.transaction() as session:
        sequence = session.get(Sequence, sequence_id)
        if sequence is None:
            abort(404)
        cached = figures.funnel(
            session, sequence, period, now, recount=lambda: _ask_recount(sequence_id, period)
        )
        title = sequence.title
        tracking = sequence.tracking
    results = cached.value
    page = render_template(
        "admin/funnel.html",
        sequence_id=sequence_id,
        title=title,
        cached=cached,
        now=now,
        results=results,
        # Shown while the sequence tracks, and after, as long as the cohort has any.
        tracked=tracking or any(part.opened or part.clicked for part in results.parts),
        readers=[(s.value, results.readers.get(s, 0)) for s in EnrollmentStatus],
        gone=GONE,
        chart=_funnel_chart(results, PERIOD_LABELS[period]),
        periods=list(PERIOD_LABELS.items()),
        period=period,
        period_label=PERIOD_LABELS[period],
        period_error=error,
        max_age_minutes=f"{figures.FUNNEL_MAX_AGE.total_seconds() / 60:g}",
    )
    return (page, 400) if error else page
