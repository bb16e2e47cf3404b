"""Development only: read the local mail catcher's mailbox in the browser.

Registered only when DEV_MAIL_DIR is set (the embedded run sets it); production never has it.
"""

from __future__ import annotations

import mailbox
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from flask import Blueprint, Response, abort, render_template

from newsletter.runtime import runtime

bp = Blueprint("devmail", __name__, url_prefix="/_dev/mail")


def _mailbox() -> mailbox.Maildir:
    folder = runtime().settings.dev_mail_dir
    assert folder is not None
    return mailbox.Maildir(Path(folder), create=True)


def _parse(box: mailbox.Maildir, key: str) -> EmailMessage:
    try:
        raw = box.get_bytes(key)
    except KeyError:
        abort(404)
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def _arrival(key: str) -> tuple[int, int]:
    # Maildir keys begin "<seconds>.M<microseconds>"; the microseconds are not zero-padded,
    # so compare the numbers, not the strings.
    match = re.match(r"(\d+)\.M(\d+)", key)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


@bp.get("/")
def inbox() -> str:
    """Every caught message, newest first."""
    box = _mailbox()
    rows = []
    for key in box.keys():
        msg = _parse(box, key)
        rows.append({"key": key, "to": msg["To"], "subject": msg["Subject"], "date": msg["Date"]})
    rows.sort(key=lambda r: _arrival(r["key"]), reverse=True)
    return render_template("dev/inbox.html", rows=rows)


@bp.get("/<key>")
def show(key: str) -> str:
    """One message: headers, the text part, and the HTML part in a frame."""
    msg = _parse(_mailbox(), key)
    text = msg.get_body(("plain",))
    headers = [(k, str(v)) for k, v in msg.items()]
    body = text.get_content() if text is not None else ""
    return render_template(
        "dev/message.html", key=key, headers=headers, text=body, subject=msg["Subject"]
    )


@bp.get("/<key>/html")
def html(key: str) -> Response:
    """The HTML part as the mail client would get it."""
    part = _parse(_mailbox(), key).get_body(("html",))
    if part is None:
        abort(404)
    # Shown as-is, framed by the message page; web.security gives it a sandboxing CSP, so it
    # may not run scripts or reach the page around it.
    return Response(part.get_content(), mimetype="text/html")
