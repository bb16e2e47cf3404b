"""A subscriber's name is text in every mail and page: never a link, an image, a heading or a tag.

Hostile names sign up, confirm and receive every part of the shipped series through the real
sender and a real SMTP server, then open each part on the reader page. Each copy must be the
copy a plain name gets with only the name changed: escaped in the HTML, as typed in the text.
The same holds for a part whose own text uses the name in a heading and a list item.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from markupsafe import escape
from sqlalchemy import select, update

from newsletter import clock
from newsletter.content.sequences import import_article
from newsletter.db import db
from newsletter.mail.compose import body_html, sample_bodies
from newsletter.mail.sandbox import TOKEN_START, AdminTemplateError, AdminTemplates
from newsletter.models import Delivery, DeliveryState, Sequence, Subscriber
from tests.helpers.apps import runtime_of
from tests.helpers.mailparse import PART, html_of, text_of
from tests.helpers.sending import active_subscriber, claim_all, deliver
from tests.helpers.smtp import SmtpSink

PLAIN = "Ingrid"
HOSTILE = [
    "[Verify your account](http://evil.example/login)",
    "![x](http://evil.example/p.png)",
    "# Heading",
    "<b>x</b><img src=http://evil.example/q.png alt=q><script>alert(1)</script>",
    "{{ 7 * 7 }} {% if true %}{{ config }}{% endif %}",
    "<https://evil.example/auto> * item _em_ `code` &amp; \\*",
    ("[Verify](http://evil.example/long) " * 3 + "Z" * 100)[:100],  # as long as signup allows
    "Ann\u202egnp.exe",  # a right-to-left override: reads "Annexe.png"
    "Аnnа Раураl",  # Cyrillic letters that look Latin
    f"{TOKEN_START}3c623eEULAVN NLSUBSTUNSUBURL7d1c",  # looks like the composer's own tokens
]


@dataclass
class Page(HTMLParser):
    """Start tags in order, the attribute values that hold addresses, and the visible text."""

    tags: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    text: str = ""

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.addresses += [v or "" for k, v in attrs if k in ("href", "src", "action")]

    def handle_data(self, data: str) -> None:
        self.text += data


def page(html: str) -> Page:
    parsed = Page()
    parsed.feed(html)
    parsed.close()
    return parsed


def send_every_part(app: Flask, names: list[str]) -> dict[str, int]:
    """Sign up and confirm a subscriber per name, then send the whole series to all of them.

    The real sender, one round per part; between rounds the next parts are made due now.
    Returns each name's subscriber id.
    """
    ids = {name: active_subscriber(f"reader{i}@example.org", name) for i, name in enumerate(names)}
    with db.session() as session:
        parts = len(session.scalars(select(Sequence).where(Sequence.is_default)).one().steps)
    for _ in range(parts + 1):
        for delivery_id in claim_all():
            deliver(app, delivery_id)
        with db.transaction() as session:
            session.execute(
                update(Delivery)
                .where(Delivery.state == DeliveryState.SCHEDULED)
                .values(due_at=clock.now())
            )
    with db.session() as session:
        for name, subscriber_id in ids.items():
            stored = session.get(Subscriber, subscriber_id)
            assert stored is not None and (stored.first_name or "") == name  # kept as typed
    return ids


def personal(app: Flask, subscriber_id: int, content: str, name: str) -> str:
    """`content` with this subscriber's own link tokens and name (as the part shows it) masked."""
    tokens = runtime_of(app).tokens
    content = content.replace(tokens.reader_token(subscriber_id), "<reader>")
    content = content.replace(tokens.unsubscribe_token(subscriber_id), "<unsubscribe>")
    content = content.replace(tokens.preferences_token(subscriber_id), "<preferences>")
    return content.replace(name, "<name>")


def mails_by_part(smtp_sink: SmtpSink, address: str) -> dict[int, EmailMessage]:
    found: dict[int, EmailMessage] = {}
    for message in smtp_sink.to(address):
        match = PART.search(text_of(message))
        if match:
            assert int(match.group(1)) not in found, "a part arrived twice"
            found[int(match.group(1))] = message
    return found


def assert_only_the_name_differs(html: str, plain_html: str, name: str, masked: str) -> None:
    """The hostile copy is the plain copy with the name put in as text, and nothing else."""
    assert masked.replace("<name>", "") != masked  # the name is there
    mine, theirs = page(html), page(plain_html)
    assert mine.tags == theirs.tags  # no link, image, heading or tag more or less
    assert not [a for a in mine.addresses if "evil.example" in a]
    assert f"Hi {name}," in mine.text  # read back as the very characters typed


def test_hostile_names_are_text_in_every_part_and_on_the_reader_page(
    app: Flask, smtp_sink: SmtpSink, at_time: Callable[[datetime], None]
) -> None:
    # Inside the send window (09:00-21:00 in the readers' zone), so every part goes when due.
    at_time(datetime(2026, 11, 30, 10, 0, tzinfo=UTC))
    ids = send_every_part(app, [PLAIN, *HOSTILE])
    with db.session() as session:
        sequence = session.scalars(select(Sequence).where(Sequence.is_default)).one()
        steps = {step.position: step.id for step in sequence.steps}
    plain = mails_by_part(smtp_sink, "reader0@example.org")
    assert sorted(plain) == sorted(steps) == [1, 2, 3, 4]
    client = app.test_client()
    site = runtime_of(app).settings.site_url
    reader = runtime_of(app).composer
    plain_pages = {
        k: client.get(reader.reader_url(ids[PLAIN], step).removeprefix(site)).get_data(True)
        for k, step in steps.items()
    }
    for index, name in enumerate(HOSTILE, 1):
        subscriber_id = ids[name]
        received = mails_by_part(smtp_sink, f"reader{index}@example.org")
        assert sorted(received) == sorted(plain), name
        for k, message in received.items():
            html, text = html_of(message), text_of(message)
            masked = personal(app, subscriber_id, html, str(escape(name)))
            plain_masked = personal(app, ids[PLAIN], html_of(plain[k]), PLAIN)
            assert masked == plain_masked, (name, k)
            assert_only_the_name_differs(html, html_of(plain[k]), name, masked)
            # The text part shows the name as typed, and nothing else changes.
            text_masked = personal(app, subscriber_id, text, name)
            assert text_masked == personal(app, ids[PLAIN], text_of(plain[k]), PLAIN)
            assert f"Hi {name}," in text
            assert str(message["Subject"]) == str(plain[k]["Subject"])

            response = client.get(reader.reader_url(subscriber_id, steps[k]).removeprefix(site))
            assert response.status_code == 200
            web = response.get_data(as_text=True)
            web_masked = personal(app, subscriber_id, web, str(escape(name)))
            assert web_masked == personal(app, ids[PLAIN], plain_pages[k], PLAIN), (name, k)
            assert_only_the_name_differs(web, plain_pages[k], name, web_masked)


NAMES_ARTICLE = """# Names As Text

## Hello {% if first_name %}{{ first_name }}{% else %}friend{% endif %}

A short opening line for {{ first_name|default("you", true) }}, with [a link](https://example.org/a).

* {% if first_name %}A list item for {{ first_name }}{% else %}A list item for everyone{% endif %}
* Another item
"""


def test_a_part_using_the_name_in_a_heading_and_a_list_shows_it_as_text(
    app: Flask, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    article = tmp_path / "names.md"
    article.write_text(NAMES_ARTICLE, encoding="utf-8")
    with db.transaction() as session:
        report = import_article(session, article, slug="names")
        for sequence in session.scalars(select(Sequence)):
            sequence.is_default = sequence.id == report.sequence.id
    assert report.parts == 1
    names = [PLAIN, "", *HOSTILE]
    ids = send_every_part(app, names)
    (plain,) = mails_by_part(smtp_sink, "reader0@example.org").values()
    for index, name in enumerate(names):
        (message,) = mails_by_part(smtp_sink, f"reader{index}@example.org").values()
        html, text = html_of(message), text_of(message).replace("\r\n", "\n")
        shown = str(escape(name))
        parsed = page(html)
        assert not [a for a in parsed.addresses if "evil.example" in a]
        assert parsed.tags.count("h2") == 1 and parsed.tags.count("li") == 2
        assert re.search(r'<a href="https://example.org/a"[^>]*>a link</a>', html)
        if not name:
            assert re.search(r"<h2[^>]*>Hello friend</h2>", html) and "for you, with" in html
            assert re.search(r"<li[^>]*>A list item for everyone</li>", html)
            continue
        # The same mail as the plain name's, but for the name put in as text.
        masked = personal(app, ids[name], html, shown)
        assert masked == personal(app, ids[PLAIN], html_of(plain), PLAIN), name
        assert parsed.tags == page(html_of(plain)).tags
        assert re.search(f"<h2[^>]*>Hello {re.escape(shown)}</h2>", html)
        assert re.search(f"<li[^>]*>A list item for {re.escape(shown)}</li>", html)
        assert f"for {shown}, with" in html
        heading = f"Hello {name}"
        assert f"\n{heading}\n{'-' * len(heading)}\n" in text  # underlined to its length
        assert f"- A list item for {name}\n" in text
        assert f"A short opening line for {name}, with a link [1]." in text
        assert TOKEN_START not in html.replace(shown, "") + text.replace(name, "")


def test_a_value_token_never_reaches_a_link_or_an_image_address() -> None:
    templates = AdminTemplates()
    for source in (
        "[x](https://e.org/{{ first_name }})",
        "![a chart](https://e.org/{{ first_name }}.png)",
        "<https://e.org/{{ first_name }}>",
        "[x][r]\n\n[r]: https://e.org/?n={{ first_name }}",
    ):
        with pytest.raises(AdminTemplateError, match="cannot be part of a link"):
            list(sample_bodies(templates, source))
    with pytest.raises(AdminTemplateError, match="cannot be part of a link"):
        body_html(templates.render_marked("[x](https://e.org/{{ first_name }})", first_name="a"))
