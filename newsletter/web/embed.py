"""The signup form for other sites: a snippet to paste (shown at /embed) and the endpoint it
posts to.

Without JavaScript the snippet is a plain form: the endpoint answers with a 303 to our "check
your inbox" page. With the optional script (static/embed.js, served from here) it is sent with
fetch and the answer appears in place; CORS lets only EMBED_ORIGINS read it. The endpoint cannot
carry our CSRF cookie, so a browser's POST whose Origin is neither ours nor allowed is refused
before anything else, and the defences of the signup page (rate limits per client and per
address, the honeypot, the daily cap of confirmation mails) apply as they are.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from newsletter.extensions import csrf
from newsletter.runtime import runtime
from newsletter.web import signups
from newsletter.web.defences import limit_signups, new_stamp, wants_json
from newsletter.web.forms import EmbedSignupForm, SignupForm, signup_link_args
from newsletter.web.timing import answer_floor

bp = Blueprint("embed", __name__)

CHECK_YOUR_INBOX = (
    "Check your inbox: if that address can receive the course, a confirmation mail is on its "
    "way. Click the link in it and part one follows right away."
)
REFUSED_ORIGIN = "This site may not send the signup form."
PREFLIGHT_MAX_AGE = "600"


def _own_origin() -> str:
    parts = urlsplit(runtime().settings.site_url)
    return f"{parts.scheme}://{parts.netloc}"


def _allowed_origin(origin: str) -> bool:
    """A site listed in EMBED_ORIGINS (never the opaque "null" origin)."""
    return origin in runtime().settings.embed_origins


def _snippet_urls() -> dict[str, str]:
    site = runtime().settings.site_url
    return {
        "action": site + url_for("embed.signup"),
        "script": site + url_for("static", filename="embed.js"),
    }


@bp.get("/embed")
def embed_page() -> str:
    """The snippet to paste on another site, and the form it makes."""
    urls = _snippet_urls()
    return render_template(
        "embed.html",
        snippet=render_template("embed_snippet.html", **urls),
        origins=runtime().settings.embed_origins,
        **urls,
    )


@bp.route("/embed/signup", methods=["OPTIONS"])
def preflight() -> Response:
    """The CORS preflight: a permission for EMBED_ORIGINS only."""
    origin = request.headers.get("Origin", "")
    if not _allowed_origin(origin):
        return Response(status=403)
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "POST"
    response.headers["Access-Control-Allow-Headers"] = "Accept, Content-Type"
    response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    return response


@bp.post("/embed/signup", provide_automatic_options=False)
@csrf.exempt  # a form on another site cannot carry our CSRF cookie: the Origin check stands in
@limit_signups
def signup() -> ResponseReturnValue:
    """Sign up from the embedded form: 303 to "check your inbox", or JSON for the script."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != _own_origin() and not _allowed_origin(origin):
        # A browser always sends Origin with a cross-site POST; one we do not know is refused
        # before the address is even read.
        if wants_json():
            return {"ok": False, "message": REFUSED_ORIGIN}, 403
        page = render_template(
            "message.html", title="This form is not ours to take", message=REFUSED_ORIGIN
        )
        return page, 403
    with answer_floor(runtime().settings.signup_answer_seconds):
        return _signup()


def _signup() -> ResponseReturnValue:
    try:
        link = signup_link_args(request.args)
    except ValueError as exc:
        if wants_json():
            return {"ok": False, "message": str(exc)}, 400
        page = render_template("message.html", title="That form did not work", message=str(exc))
        return page, 400
    form = EmbedSignupForm()
    if form.validate_on_submit() and signups.submit(form, link, "embed"):
        if wants_json():
            return {"ok": True, "message": CHECK_YOUR_INBOX}
        return redirect(url_for("public.thanks"), code=303)
    errors = {name: list(field.errors) for name, field in form._fields.items() if field.errors}
    if wants_json():
        return {"ok": False, "errors": errors, "message": _first(errors)}, 400
    # Without the script: our own signup page, with what was typed and what is wrong with it.
    page_form = SignupForm(
        formdata=None,
        data={
            "email": form.email.data,
            "first_name": form.first_name.data,
            "time_zone": form.time_zone.data,
            "stamp": new_stamp(),
        },
    )
    for name, messages in errors.items():
        getattr(page_form, name).errors = messages
    return signups.page(page_form, link), 400


def _first(errors: dict[str, list[str]]) -> str:
    return next((messages[0] for messages in errors.values() if messages), "Check the form.")


@bp.after_request
def cors(response: Response) -> Response:
    """Let an allowed site's script read the endpoint's answer; nobody else's."""
    if request.endpoint in ("embed.signup", "embed.preflight"):
        origin = request.headers.get("Origin", "")
        if _allowed_origin(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
        response.vary.add("Origin")
    return response
