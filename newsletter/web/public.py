"""Public pages: signup, confirm, unsubscribe."""

from __future__ import annotations

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_limiter import RateLimitExceeded

from newsletter import clock
from newsletter.audience import reading, subscriptions
from newsletter.db import db
from newsletter.extensions import csrf
from newsletter.models import Subscriber
from newsletter.runtime import runtime
from newsletter.tasks import kick
from newsletter.tokens import TokenError
from newsletter.web import errors, signups
from newsletter.web.defences import (
    HONEYPOT_FIELD,
    limit_per_ip_and_address,
    limit_signups,
    new_stamp,
    wants_json,
)
from newsletter.web.forms import (
    ConfirmForm,
    LeavingReasonForm,
    ResendForm,
    SignupForm,
    UnsubscribeForm,
    signup_link_args,
)
from newsletter.web.timing import answer_floor
from newsletter.web.when import when

bp = Blueprint("public", __name__)

UNSUBSCRIBE_LIMIT_PER_IP = "300 per minute"
UNSUBSCRIBE_LIMIT_PER_LINK = "10 per minute"


def _bad_signup_link(error: ValueError) -> tuple[str, int]:
    page = render_template(
        "message.html", title="That signup link did not work", message=str(error)
    )
    return page, 400


@bp.get("/")
def signup_page() -> str | tuple[str, int]:
    """The signup form; `?form=` and `?sequence=` say where it is embedded and for which series."""
    try:
        link = signup_link_args(request.args)
    except ValueError as exc:
        return _bad_signup_link(exc)
    return signups.page(SignupForm(stamp=new_stamp()), link)


@bp.post("/")
@limit_signups
def signup() -> ResponseReturnValue:
    """Create (or refresh) a pending subscriber and queue the confirmation mail.

    Every answer leaves no sooner than SIGNUP_ANSWER_SECONDS after the request came in: a new
    address costs more work than a known one, and the difference would tell who is on the list.
    """
    with answer_floor(runtime().settings.signup_answer_seconds):
        return _signup()


def _signup() -> ResponseReturnValue:
    try:
        link = signup_link_args(request.args)
    except ValueError as exc:
        return _bad_signup_link(exc)
    form = SignupForm()
    if form.validate_on_submit() and signups.submit(form, link, "signup-page"):
        # One response whatever the address's state, so the form reveals nothing.
        return redirect(url_for("public.thanks"), code=303)
    return signups.page(form, link), 400


@bp.get("/thanks")
def thanks() -> str:
    """Check your inbox; with the form that sends the confirmation again."""
    form = ResendForm()
    return render_template("thanks.html", form=form, again=request.args.get("again") == "1")


@bp.post("/thanks")
@limit_signups
def resend() -> ResponseReturnValue:
    """Send the confirmation again: the same answer, after the same time, whatever the
    address's state (only a pending address within its caps gets a mail)."""
    with answer_floor(runtime().settings.signup_answer_seconds):
        form = ResendForm()
        if not form.validate_on_submit():
            return render_template("thanks.html", form=form, again=False), 400
        if not request.form.get(HONEYPOT_FIELD):
            try:
                with db.transaction() as session:
                    subscriptions.resend_confirmation(session, form.email.data or "", clock.now())
            except subscriptions.SignupError as exc:
                form.email.errors = [*form.email.errors, str(exc)]
                return render_template("thanks.html", form=form, again=False), 400
            kick()
        return redirect(url_for("public.thanks", again="1"), code=303)


NO_LONGER_VALID = "This confirmation link is no longer valid."


def _bad_link(message: str) -> tuple[str, int]:
    page = render_template(
        "message.html", title="That link did not work", message=message, show_signup=True
    )
    return page, 400


@bp.get("/confirm/<token>")
def confirm_page(token: str) -> str | tuple[str, int]:
    """Show the confirm button: mail scanners open links, so a GET confirms nothing."""
    try:
        subscriber_id, email = runtime().tokens.read_confirm(token)
    except TokenError as exc:
        return _bad_link(str(exc))
    with db.session() as session:
        if not subscriptions.confirmable(session, subscriber_id, email):
            return _bad_link(NO_LONGER_VALID)
    return render_template("confirm.html", form=ConfirmForm(), email=email)


@bp.post("/confirm/<token>")
@csrf.exempt  # checked by the form below, which offers the button again instead of a bare 400
def confirm(token: str) -> str | tuple[str, int]:
    """Activate the subscription (the page's button); part 1 is queued at once."""
    rt = runtime()
    try:
        subscriber_id, email = rt.tokens.read_confirm(token)
    except TokenError as exc:
        return _bad_link(str(exc))
    form = ConfirmForm()
    if not form.validate_on_submit():
        # The page sat open past the CSRF token's life (or was not our page): ask again.
        return render_template("confirm.html", form=form, email=email, stale=True), 400
    with db.transaction() as session:
        subscriber = subscriptions.confirm(
            session, subscriber_id, email, clock.now(), rt.settings.drip_day_seconds
        )
    if subscriber is None:
        return _bad_link(NO_LONGER_VALID)
    kick()
    now = clock.now()
    with db.session() as session:
        upcoming = reading.after_the_first(
            session, subscriber_id, now, rt.settings.drip_day_seconds
        )
    follows = (
        when(upcoming.due, now, upcoming.time_zone, rt.settings.drip_day_seconds)
        if upcoming
        else None
    )
    token = rt.tokens.preferences_token(subscriber.id)
    return render_template(
        "confirmed.html",
        upcoming=upcoming,
        follows=follows,
        preferences_url=url_for("preferences.page", token=token),
    )


def _unsubscribe_target(token: str) -> int:
    try:
        return runtime().tokens.read_unsubscribe(token)
    except TokenError:
        abort(404)


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> str:
    """Ask for a click: link scanners follow GETs, so a GET never unsubscribes."""
    subscriber_id = _unsubscribe_target(token)
    with db.session() as session:
        subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        abort(404)
    return render_template("unsubscribe.html", form=UnsubscribeForm(), email=subscriber.email)


def _unsubscribe_token() -> str:
    return str((request.view_args or {}).get("token", ""))[:500]


@bp.post("/unsubscribe/<token>")
@csrf.exempt
# Mail providers send one-click unsubscribes for many readers from a few addresses of theirs:
# the per-client limit is wide, the per-link one narrow.
@limit_per_ip_and_address(
    UNSUBSCRIBE_LIMIT_PER_IP,
    UNSUBSCRIBE_LIMIT_PER_LINK,
    scope="unsubscribe",
    address=_unsubscribe_token,
)
def unsubscribe(token: str) -> str:
    """Unsubscribe: the page's button, or an RFC 8058 one-click POST from the mail client."""
    subscriber_id = _unsubscribe_target(token)
    source = "one-click" if request.form.get("List-Unsubscribe") == "One-Click" else "page"
    with db.transaction() as session:
        found = subscriptions.unsubscribe(session, subscriber_id, clock.now(), source)
    if not found:
        abort(404)
    settings = runtime().settings
    subscriptions.wait_while_mid_send(
        db.session, subscriber_id, clock.now, settings.unsubscribe_wait_seconds
    )
    return render_template("unsubscribed.html", form=LeavingReasonForm(), token=token)


@bp.post("/unsubscribe/<token>/reason")
def leaving_reason(token: str) -> ResponseReturnValue:
    """Keep why someone left (optional, after the fact); a person still subscribed is asked
    nothing and nothing is kept."""
    subscriber_id = _unsubscribe_target(token)
    form = LeavingReasonForm()
    if not form.validate_on_submit():
        return render_template("unsubscribed.html", form=form, token=token), 400
    with db.transaction() as session:
        kept = subscriptions.record_leaving_reason(
            session, subscriber_id, form.reason.data, form.detail.data or "", clock.now()
        )
    if not kept:
        abort(404)
    return render_template(
        "message.html",
        title="Thank you",
        message="Your answer helps the writer make the course better. Nothing more will be sent.",
        show_signup=False,
    )


@bp.app_errorhandler(RateLimitExceeded)
def too_many_requests(error: RateLimitExceeded) -> ResponseReturnValue:
    """Over a rate limit: the 429 page of every error (or, for the embedded form's script,
    the same words as JSON). The admin's sign-in answers its own first."""
    if wants_json():
        return {"ok": False, "message": errors.PAGES[429][1]}, 429
    return errors.error_page(error)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness probe."""
    return {"status": "ok"}
