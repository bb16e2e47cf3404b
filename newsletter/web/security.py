"""Headers every response carries, and a readable page for an expired form.

Personal tokens live in URLs (confirm, unsubscribe, archive links), so no page may be cached,
framed, or leak its address in a Referer. No page runs inline script; only the pages that show
a mail's HTML allow inline styles (CSS inlining puts them there) and https images.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, render_template, request
from flask_wtf.csrf import CSRFError

# A year: browsers then refuse plain http to this host (SITE_URL is https) for that long.
HSTS = "max-age=31536000"

_BASE_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def _csp(*prefix: str, **changes: str) -> str:
    directives = _BASE_POLICY | {name.replace("_", "-"): value for name, value in changes.items()}
    return "; ".join([*prefix, *(f"{name} {value}" for name, value in directives.items())])


PAGE_CSP = _csp()
# A mail's HTML as a page: inlined CSS in style attributes and a <style> block for the phone
# and dark-mode queries, images from https. Still no script of any kind.
MAIL_CSP = _csp(style_src="'self' 'unsafe-inline'", img_src="'self' https:")
# The dev mail viewer frames a caught mail's HTML on its own page; the frame stays sandboxed.
FRAMED_MAIL_CSP = _csp(
    "sandbox", style_src="'self' 'unsafe-inline'", img_src="'self' https:", frame_ancestors="'self'"
)

# endpoint -> (Content-Security-Policy, X-Frame-Options)
_EXCEPTIONS = {
    "reader.part": (MAIL_CSP, "DENY"),
    "devmail.html": (FRAMED_MAIL_CSP, "SAMEORIGIN"),
    # The sequence editor's preview of a part, framed by the editor page.
    "admin.step_preview": (FRAMED_MAIL_CSP, "SAMEORIGIN"),
}


def security_headers(response: Response) -> Response:
    """Add the CSP, framing, sniffing, referrer and caching headers to a response."""
    csp, frame_options = _EXCEPTIONS.get(request.endpoint or "", (PAGE_CSP, "DENY"))
    headers = response.headers
    headers["Content-Security-Policy"] = csp
    headers["X-Frame-Options"] = frame_options
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    if current_app.config.get("SESSION_COOKIE_SECURE"):  # set when SITE_URL is https
        headers["Strict-Transport-Security"] = HSTS
    if request.endpoint != "static" and "no-store" not in headers.get("Cache-Control", ""):
        # Pages are personal (tokens in URLs, CSRF tokens in forms): never kept by a cache.
        headers["Cache-Control"] = "no-store"
    return response


def expired_form(error: CSRFError) -> tuple[str, int]:
    """A missing or expired CSRF token: say what happened instead of a bare 400."""
    page = render_template(
        "message.html",
        title="This page has expired",
        message=(
            "The form was open for more than an hour, or your browser did not keep its cookie. "
            "Go back, reload the page and send it again."
        ),
        show_signup=False,
    )
    return page, 400


def register(app: Flask) -> None:
    """Attach the headers to every response and the expired-form page to CSRF errors."""
    app.after_request(security_headers)
    app.register_error_handler(CSRFError, expired_form)
