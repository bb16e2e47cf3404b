"""The error pages: every error answers with a page in the product's style, never a
framework's default, saying what happened and what to do."""

from __future__ import annotations

import logging

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

# Status → (title, what to do). Anything else gets the generic words of its class.
PAGES: dict[int, tuple[str, str]] = {
    400: (
        "That request did not work",
        "Something in the link or the form was not right. Go back and try again, or start "
        "from the signup page.",
    ),
    403: ("Not allowed", "This page is not open to you."),
    404: (
        "Page not found",
        "There is nothing at this address. If you followed a link from a mail, it may be "
        "incomplete: copy the whole link, or open the mail again.",
    ),
    405: ("That request did not work", "This page does not take that kind of request."),
    413: ("That was too large", "What you sent is larger than this site accepts."),
    429: (
        "Too many requests",
        "You have sent a lot of requests in a short time. Wait a few minutes and try again.",
    ),
    500: (
        "Something went wrong on our side",
        "Nothing you did caused this, and it has been logged. Try again in a few minutes.",
    ),
}


def error_page(error: HTTPException) -> tuple[str, int, list[tuple[str, str]]]:
    """The page of an HTTP error, with its status and its own headers (a 405's Allow)."""
    code = error.code or 500
    title, message = PAGES.get(code, PAGES[500] if code >= 500 else PAGES[400])
    page = render_template("message.html", title=title, message=message, show_signup=False)
    headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
    return page, code, headers


def server_error(error: InternalServerError) -> tuple[str, int, list[tuple[str, str]]]:
    """An unhandled exception: logged with its traceback, answered with our page."""
    log.error("unhandled error: %s", error.original_exception or error)
    return error_page(error)


def register(app: Flask) -> None:
    """Answer every HTTP error with `error_page` (blueprints may answer their own first)."""
    app.register_error_handler(HTTPException, error_page)
    app.register_error_handler(InternalServerError, server_error)
