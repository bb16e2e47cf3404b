"""The reader's pages: a received part in the browser, and the archive of received parts."""

from __future__ import annotations

from flask import Blueprint, Response, abort, render_template

from newsletter.audience import reading
from newsletter.db import db
from newsletter.models import Subscriber
from newsletter.runtime import runtime
from newsletter.tokens import TokenError

bp = Blueprint("reader", __name__)


def _subscriber(token: str) -> Subscriber:
    try:
        subscriber_id = runtime().tokens.read_reader(token)
    except TokenError:
        abort(404)
    with db.session() as session:
        subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        abort(404)
    return subscriber


@bp.get("/read/<token>")
def archive(token: str) -> str:
    """Every part this subscriber has received, newest series first, in order."""
    subscriber = _subscriber(token)
    composer = runtime().composer
    with db.session() as session:
        courses = reading.courses(session, subscriber.id)
    shown = [
        (
            course,
            [
                (step_id, position, composer.personalise(subject, subscriber))
                for step_id, position, subject in course.parts
            ],
        )
        for course in courses
    ]
    return render_template("archive.html", token=token, courses=shown)


@bp.get("/read/<token>/<int:step_id>")
def part(token: str, step_id: int) -> Response:
    """One received part, as the mail showed it; parts not yet sent are not found."""
    subscriber = _subscriber(token)
    with db.session() as session:
        step = reading.received_step(session, subscriber.id, step_id)
        if step is None:
            abort(404)
        html = runtime().composer.web_page(subscriber, step, step.sequence)
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return response
