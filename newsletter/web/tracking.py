"""The addresses a tracked mail's links and open image point at (`/c/...`, `/o/....gif`).

Public and thin: read the signed token, record through `delivery/tracking.py`, answer. A click
is redirected only to the URL its step holds at the token's index; a forged or foreign token,
or a link the step does not have, gets a page saying so and no redirect. Nothing in the
request other than the token and the method is read (a `?url=` is ignored): a HEAD is
answered alike and records nothing, as link checkers send it. Neither changes a subscription.
"""

from __future__ import annotations

import base64

from flask import Blueprint, Response, redirect, render_template, request
from flask.typing import ResponseReturnValue

from newsletter import clock
from newsletter.db import db
from newsletter.delivery import tracking
from newsletter.runtime import runtime
from newsletter.tokens import TokenError

bp = Blueprint("tracking", __name__)

# The smallest transparent GIF (1x1), the open image's body.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _no_link() -> tuple[str, int]:
    page = render_template(
        "message.html",
        title="That link did not work",
        message="This link is not one we sent, or it was changed on its way, so it leads "
        "nowhere. The other links in the mail still work.",
    )
    return page, 404


@bp.get("/c/<token>")
def click(token: str) -> ResponseReturnValue:
    """Follow a tracked mail's link: its first click recorded, then to the step's own URL."""
    try:
        delivery_id, link = runtime().tokens.read_click(token)
    except TokenError:
        return _no_link()
    with db.transaction() as session:
        url = tracking.follow(
            session, delivery_id, link, clock.now(), record=request.method == "GET"
        )
    if url is None:
        return _no_link()
    return redirect(url, code=302)


@bp.get("/o/<token>.gif")
def open_image(token: str) -> ResponseReturnValue:
    """A tracked mail's one-pixel image: its first load recorded as the mail's open."""
    try:
        delivery_id = runtime().tokens.read_open(token)
    except TokenError:
        return Response(status=404)
    with db.transaction() as session:
        known = tracking.opened(session, delivery_id, clock.now(), record=request.method == "GET")
    if not known:
        return Response(status=404)
    return Response(PIXEL, mimetype="image/gif")
