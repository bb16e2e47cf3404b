"""The editor's preview (content/preview.py): the real mail, and errors per field, never a 500."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter import clock
from newsletter.content import send_test
from newsletter.content.preview import (
    Resource,
    StepFields,
    field_errors,
    preview_step,
    sample_labels,
    warnings,
)
from newsletter.db import db
from newsletter.mail.compose import Addressee
from newsletter.models import Sequence
from tests.helpers.apps import runtime_of
from tests.helpers.mailparse import html_of, text_of
from tests.helpers.smtp import SmtpSink

pytestmark = pytest.mark.any_database


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)


def tags_in(html: str) -> set[str]:
    """The names of the elements a browser would build from `html`."""
    parser = _Tags()
    parser.feed(html)
    return parser.names


def _seed(app: Flask) -> Sequence:
    with db.session() as session:
        sequence = session.scalars(select(Sequence)).one()
        assert sequence.steps  # loaded before it leaves the session (with its steps)
        session.expunge(sequence)
        return sequence


def test_a_live_step_previews_as_the_mail_it_sends(app: Flask) -> None:
    composer = runtime_of(app).composer
    with db.session() as session:
        sequence = session.scalars(select(Sequence)).one()
        step = sequence.steps[0]
        total = len(sequence.steps)
        preview = preview_step(composer, sequence, StepFields.of(step), position=1, total=total)
        sent = composer.step(Addressee(0, "preview@example.invalid", None), step, sequence, total)
        step_id = step.id
    assert preview.ok and not preview.errors
    assert preview.subject == sent.subject
    # The same renderer and layout; only the "view in browser" link names no stored step.
    assert preview.html == re.sub(rf"(/read/[^/\"]+)/{step_id}\b", r"\1/0", sent.html)
    assert f"Part 1 of {total}" in preview.html and "1 Test Street" in preview.html


def test_unsaved_text_shows_in_both_parts(app: Flask) -> None:
    sequence = _seed(app)
    fields = StepFields(subject="A new day", body_md="Hello **bold** [link](https://e.org/x)")
    preview = preview_step(
        runtime_of(app).composer, sequence, fields, position=2, total=len(sequence.steps)
    )
    assert preview.ok
    assert "<strong" in preview.html and "bold</strong>" in preview.html
    assert "Hello **bold** link [1]" in preview.text and "[1] https://e.org/x" in preview.text
    assert preview.subject == "A new day"


@pytest.mark.parametrize(
    ("index", "shown"),
    [
        (sample_labels().index("a non-Latin name"), "李小龍"),
        (sample_labels().index("a right-to-left name"), "محمد"),
        (sample_labels().index("a name full of Markdown and HTML"), "[*x*](http://e.org) &lt;a"),
    ],
)
def test_a_sample_subscriber_is_greeted_as_text(app: Flask, index: int, shown: str) -> None:
    sequence = _seed(app)
    fields = StepFields(subject="Hi {{ first_name }}", body_md="Dear {{ first_name }}, hello.")
    preview = preview_step(
        runtime_of(app).composer, sequence, fields, position=1, total=3, sample=index
    )
    assert preview.ok, preview.errors
    assert shown in preview.html
    assert '<a href="http://e.org"' not in preview.html
    assert preview.sample == sample_labels()[index]


BAD_URL = (Resource("T", url="javascript:alert(1)"),)
NO_TITLE = (Resource("", url="https://e.org"),)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        (StepFields("S", "Seven: {{ 7*7 }}"), "body_md", "arithmetic"),
        (StepFields("S", "{% for x in first_name %}{{ x }}{% endfor %}"), "body_md", "loops"),
        (StepFields("S", "[win](javascript:alert(1))"), "body_md", "https://"),
        (StepFields("S", "[plain](http://e.org)"), "body_md", "https://"),
        (StepFields("S", "![](https://e.org/a.png)"), "body_md", "alt text"),
        (StepFields("S", ""), "body_md", "empty"),
        (StepFields("Hi\r\nBcc: all@e.org", "Body"), "subject", "one line"),
        (StepFields("", "Body"), "subject", "empty"),
        (StepFields("{{ first_name.__class__ }}", "Body"), "subject", "attribute"),
        (StepFields("S", "Body", preheader="a\nb"), "preheader", "one line"),
        (StepFields("S", "Body", day_offset=-1), "day_offset", "from 0"),
        (StepFields("S", "B", resources=BAD_URL), "resources-0-url", "https://"),
        (StepFields("S", "B", resources=NO_TITLE), "resources-0-title", "title"),
    ],
)
def test_bad_text_is_an_error_beside_its_field(
    app: Flask, fields: StepFields, field: str, words: str
) -> None:
    sequence = _seed(app)
    errors = field_errors(fields)
    assert field in errors and words in " ".join(errors[field]), errors
    preview = preview_step(runtime_of(app).composer, sequence, fields, position=1, total=3)
    assert not preview.ok and preview.errors == errors and preview.html == ""


def test_hostile_text_that_is_allowed_renders_escaped(app: Flask) -> None:
    sequence = _seed(app)
    fields = StepFields(
        subject="<script>alert(1)</script> שלום",
        body_md="<script>alert(1)</script>\n\n<img src=x onerror=alert(1)> {{ '{{' }} 7*7 }}",
    )
    assert field_errors(fields) == {}
    preview = preview_step(runtime_of(app).composer, sequence, fields, position=1, total=3)
    assert preview.ok
    assert tags_in(preview.html) & {"script", "img"} == set()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in preview.html
    assert "{{ 7*7 }}" in preview.text and "49" not in preview.text
    assert preview.subject == "<script>alert(1)</script> שלום"


def test_an_empty_link_url_is_a_warning_not_an_error(app: Flask) -> None:
    sequence = _seed(app)
    fields = StepFields(
        "S",
        "Body",
        resources=(Resource("Read more", "Why", ""), Resource("Done", "", "mailto:a@e.org")),
    )
    assert field_errors(fields) == {}
    assert warnings(fields) == [
        "The link “Read more” has no URL yet: fill it in before publishing."
    ]
    preview = preview_step(runtime_of(app).composer, sequence, fields, position=3, total=3)
    assert preview.ok and preview.warnings == warnings(fields)
    assert "Read more" in preview.html and "link coming soon" in preview.html


def test_a_snapshot_entry_round_trips() -> None:
    entry = {
        "key": "abc",
        "subject": "S",
        "preheader": "P",
        "day_offset": 2,
        "body_md": "B",
        "teaser": None,
        "resources": [{"title": "T", "blurb": "", "url": ""}],
        "resources_intro": None,
    }
    fields = StepFields.of(entry)
    assert fields.as_dict() == {k: v for k, v in entry.items() if k != "key"}


def test_a_draft_step_test_send_arrives_as_built(app: Flask, smtp_sink: SmtpSink) -> None:
    rt = runtime_of(app)
    sequence = _seed(app)
    fields = StepFields("Draft {{ first_name }}", "The *unpublished* text.", preheader="Soon")
    mail = send_test.build_step_test_mail(
        rt.composer,
        "Editor@Example.org",
        sequence,
        fields,
        clock.now(),
        position=2,
        total=4,
        first_name="Ann",
    )
    send_test.send_test_mails(rt.settings, [mail])
    (msg,) = smtp_sink.to("editor@example.org")
    assert msg["Subject"] == "[Test] Draft Ann"
    assert "The *unpublished* text." in text_of(msg) and "Part 2 of 4" in text_of(msg)
    assert "<em>unpublished</em>" in html_of(msg)


@pytest.mark.parametrize(
    ("address", "fields", "words"),
    [
        ("not an address", StepFields("S", "B"), "email"),
        ("a@example.org", StepFields("S\r\nBcc: x@e.org", "B"), "subject"),
        ("a@example.org", StepFields("S", "{{ 7*7 }}"), "body_md"),
    ],
)
def test_a_test_send_of_a_bad_step_or_address_is_refused(
    app: Flask, smtp_sink: SmtpSink, address: str, fields: StepFields, words: str
) -> None:
    rt = runtime_of(app)
    with pytest.raises(send_test.TestSendError, match=words):
        send_test.build_step_test_mail(
            rt.composer, address, _seed(app), fields, clock.now(), position=1, total=1
        )
    assert smtp_sink.messages == []
