"""Reading mail the way a person's client would: parts, links, headers."""

from __future__ import annotations

import re
from email.message import EmailMessage
from urllib.parse import urlsplit

PART = re.compile(r"Part (\d+) of (\d+)")


def text_of(msg: EmailMessage) -> str:
    """The text/plain part."""
    part = msg.get_body(("plain",))
    assert part is not None, "message has no text/plain part"
    return str(part.get_content())


def html_of(msg: EmailMessage) -> str:
    """The text/html part."""
    part = msg.get_body(("html",))
    assert part is not None, "message has no text/html part"
    return str(part.get_content())


def link(msg: EmailMessage, kind: str) -> str:
    """The path of the first `/kind/<token>` link in the text part."""
    match = re.search(rf"https?://\S+/{kind}/[A-Za-z0-9._\-]+", text_of(msg))
    assert match, f"no /{kind}/ link in:\n{text_of(msg)}"
    return urlsplit(match.group(0)).path


def part_number(msg: EmailMessage) -> tuple[int, int]:
    """(k, N) from the "Part k of N" line of a series mail."""
    match = PART.search(text_of(msg))
    assert match, "not a part of a series"
    return int(match.group(1)), int(match.group(2))


def unsubscribe_path(msg: EmailMessage) -> str:
    """The path of the https URL in List-Unsubscribe."""
    header = str(msg["List-Unsubscribe"])
    match = re.search(r"<(https://[^>]+)>", header)
    assert match, f"no https URL in List-Unsubscribe: {header}"
    return urlsplit(match.group(1)).path
