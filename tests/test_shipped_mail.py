"""Every mail the product ships (the seed series and the confirmation) parses strictly.

Built by the real Composer and sent to a real SMTP server, then read back with Python's
`email` package under `policy.strict`, which raises on any defect.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter.db import db
from newsletter.mail.compose import markdown_to_text
from newsletter.models import Sequence
from tests.helpers.shipped import send_shipped_mails
from tests.helpers.smtp import SmtpSink

COMMON = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type")
SERIES = ("List-Id", "List-Unsubscribe", "List-Unsubscribe-Post")


def strict(raw: bytes) -> EmailMessage:
    parsed = BytesParser(policy=policy.strict).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    return parsed


def check(message: EmailMessage, headers: tuple[str, ...]) -> None:
    for name in headers:
        assert len(message.get_all(name, [])) == 1, f"{name} missing or repeated"
    assert message.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in message.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    for part in message.iter_parts():
        assert not part.defects
        assert part.get_content().strip()
    assert not message.defects


@pytest.mark.any_database
def test_the_seed_series_and_the_confirmation_parse_strictly(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    received = [strict(raw) for raw in send_shipped_mails(app, smtp_sink)]
    with db.session() as session:
        steps = list(session.scalars(select(Sequence)).one().steps)
    assert len(received) == 1 + len(steps) == 5
    check(received[0], COMMON)
    for message in received[1:]:
        check(message, COMMON + SERIES)
        assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
        assert message["To"].addresses[0].display_name == "Zoë"
    subjects = [str(m["Subject"]) for m in received[1:]]
    assert subjects == [step.subject for step in steps]


def test_text_part_numbers_links_and_lists_them() -> None:
    source = (
        "# Title\n\nSee [the guide](https://e.org/g) and [again](https://e.org/g), "
        "then [more](https://e.org/m).\n\n* one\n+ two\n- three\n\nA \\*literal\\* star."
    )
    assert markdown_to_text(source) == (
        "Title\n=====\n\nSee the guide [1] and again [1], then more [2].\n\n"
        "- one\n- two\n- three\n\nA *literal* star.\n\n"
        "Links:\n[1] https://e.org/g\n[2] https://e.org/m\n"
    )
