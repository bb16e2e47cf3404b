"""Tracking, opt-in per sequence: real mail to the SMTP sink, its links parsed out of the
received mail and followed with the Flask client. An untracked sequence's mail carries no
tracked link and no image; a tracked one does, and says so; a click goes to exactly the URL
the step holds and is recorded once; no other token, index or parameter redirects anywhere.
SQLite and PostgreSQL.
"""

from __future__ import annotations

import html
import re
from email.message import EmailMessage
from urllib.parse import urlsplit

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from newsletter.audience import erasure
from newsletter.db import db
from newsletter.models import (
    AuditEntry,
    Base,
    Click,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Open,
    Sequence,
    Subscriber,
    SubscriberStatus,
)
from tests.helpers.admin import create_admin, csrf_token, signed_in
from tests.helpers.apps import runtime_of
from tests.helpers.mailparse import html_of, text_of
from tests.helpers.sending import active_subscriber, claim_all, deliver, send_part_one
from tests.helpers.smtp import SmtpSink

FIRST = "https://example.org/a"
SECOND = "https://example.org/b?x=1&y=2"
BODY = (
    f"Read [the first]({FIRST}), then [the second]({SECOND}), and [the first again]({FIRST}). "
    "Write to [us](mailto:hello@example.org).\n\n"
)
HREF = re.compile(r'href="([^"]+)"')
PIXEL = re.compile(r'<img src="([^"]+)" width="1" height="1"')
FOOTER = "counts opens and link clicks"


@pytest.fixture
def editor(app: Flask) -> FlaskClient:
    create_admin(app, "ed@example.org", role="editor")
    return signed_in(app.test_client(), "ed@example.org")


def prepare(tracking: bool) -> int:
    """The seed sequence with links in part 1, tracking on or off; its id."""
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        sequence.steps[0].body_md = BODY + sequence.steps[0].body_md
        sequence.tracking = tracking
        return sequence.id


def mail_to(app: Flask, smtp_sink: SmtpSink, email: str) -> EmailMessage:
    send_part_one(app, email)
    return smtp_sink.to(email)[-1]


def hrefs(message: EmailMessage) -> list[str]:
    return [html.unescape(href) for href in HREF.findall(html_of(message))]


def local(app: Flask, url: str) -> str:
    """A URL of the site as the test client's path (and query)."""
    site = runtime_of(app).settings.site_url
    assert url.startswith(site + "/"), url
    return url.removeprefix(site)


def tracked_links(app: Flask, message: EmailMessage) -> list[str]:
    site = runtime_of(app).settings.site_url
    return [href for href in hrefs(message) if href.startswith(f"{site}/c/")]


def clicks() -> list[tuple[int, int]]:
    with db.session() as session:
        rows = session.execute(select(Click.delivery_id, Click.link).order_by(Click.id))
        return [(int(d), int(link)) for d, link in rows]


def opens() -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Open)) or 0)


def sent_delivery(email: str) -> int:
    with db.session() as session:
        return int(
            session.scalars(
                select(Delivery.id)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Subscriber.email == email, Delivery.state == DeliveryState.SENT)
                .where(Delivery.kind == DeliveryKind.STEP)
            ).one()
        )


def test_an_untracked_sequence_mail_has_no_tracked_link_and_no_image(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    prepare(tracking=False)
    message = mail_to(app, smtp_sink, "plain@example.org")
    assert FIRST in hrefs(message) and SECOND in hrefs(message)
    assert tracked_links(app, message) == []
    assert PIXEL.search(html_of(message)) is None and "/o/" not in html_of(message)
    assert "/c/" not in text_of(message) and f"[1] {FIRST}" in text_of(message)
    assert FOOTER not in html_of(message) and FOOTER not in text_of(message)


def test_a_tracked_mail_has_tracked_links_and_an_image_and_says_so(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    prepare(tracking=True)
    message = mail_to(app, smtp_sink, "tracked@example.org")
    site = runtime_of(app).settings.site_url
    links = tracked_links(app, message)
    # Three links to two addresses: the first and the third are the same link, by its number.
    assert len(links) == 3 and links[0] == links[2] != links[1]
    assert FIRST not in hrefs(message) and SECOND not in hrefs(message)
    assert "mailto:hello@example.org" in hrefs(message)  # not a web address: left alone
    # Ours are never rewritten: view in browser, the archive, preferences, unsubscribe.
    ours = [href for href in hrefs(message) if href.startswith(site) and "/c/" not in href]
    assert {urlsplit(href).path.split("/")[1] for href in ours} == {
        "read",
        "preferences",
        "unsubscribe",
    }
    pixel = PIXEL.search(html_of(message))
    assert pixel is not None and re.fullmatch(rf"{re.escape(site)}/o/[\w.-]+\.gif", pixel[1])
    assert FOOTER in html_of(message) and FOOTER in text_of(message)
    text_links = re.findall(rf"\[\d\] ({re.escape(site)}/c/\S+)", text_of(message))
    assert text_links == links[:2]


def test_a_click_goes_to_exactly_the_stored_url_and_is_recorded_once(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    prepare(tracking=True)
    message = mail_to(app, smtp_sink, "clicker@example.org")
    delivery_id = sent_delivery("clicker@example.org")
    client = app.test_client()
    first, second, again = tracked_links(app, message)
    checked = client.head(local(app, second))  # a link checker: answered, not counted
    assert checked.status_code == 302 and checked.headers["Location"] == SECOND
    assert clicks() == []
    answer = client.get(local(app, second))
    assert answer.status_code == 302 and answer.headers["Location"] == SECOND
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert "Content-Security-Policy" in answer.headers
    assert clicks() == [(delivery_id, 1)]
    for url in (second, first, again, first):
        assert client.get(local(app, url)).headers["Location"] == (
            SECOND if url == second else FIRST
        )
    assert clicks() == [(delivery_id, 1), (delivery_id, 0)]
    with db.session() as session:
        status = session.scalars(
            select(Subscriber.status).where(Subscriber.email == "clicker@example.org")
        ).one()
    assert status is SubscriberStatus.ACTIVE


def test_no_other_token_index_or_parameter_redirects(app: Flask, smtp_sink: SmtpSink) -> None:
    prepare(tracking=True)
    message = mail_to(app, smtp_sink, "target@example.org")
    delivery_id = sent_delivery("target@example.org")
    composer = runtime_of(app).composer
    tokens = runtime_of(app).tokens
    client = app.test_client()
    first = local(app, tracked_links(app, message)[0])
    token = first.removeprefix("/c/")
    signed, signature = token.rsplit(".", 1)
    with db.session() as session:
        confirm_id = session.scalars(
            select(Delivery.id).where(Delivery.kind == DeliveryKind.CONFIRM)
        ).first()
        subscriber = session.scalars(select(Subscriber)).first()
    assert confirm_id is not None and subscriber is not None
    refused = [
        first[:-2] + ("AA" if not first.endswith("AA") else "BB"),  # forged signature
        f"/c/{delivery_id}.1.{signature}",  # a valid token with its index changed
        f"/c/{delivery_id + 1}.0.{signature}",  # and with its delivery changed
        f"/c/{tokens.click_token(delivery_id, 2)}",  # signed, but the step has two links
        f"/c/{tokens.click_token(confirm_id, 0)}",  # signed, a mail without a step
        f"/c/{tokens.click_token(delivery_id + 999, 0)}",  # signed, no such delivery
        "/c/" + composer.unsubscribe_url(subscriber.id).rsplit("/", 1)[1],
        "/c/" + composer.confirm_url(subscriber).rsplit("/", 1)[1],
        "/c/" + tokens.open_token(delivery_id),
        f"/c/{signed}.x?url=https://evil.example/",
        "/c/?url=https://evil.example/",
        "/c/x?url=https://evil.example/",
    ]
    for path in refused:
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "Location" not in answer.headers, path
        assert "evil.example" not in answer.get_data(as_text=True)
    page = client.get(refused[0]).get_data(as_text=True)
    assert "That link did not work" in page and "<main" in page
    # A parameter on a real link is not read: it goes where the step says.
    answer = client.get(first + "?url=https://evil.example/")
    assert answer.headers["Location"] == FIRST
    assert clicks() == [(delivery_id, 0)]
    for path in (f"/o/{token}.gif", f"/o/{tokens.open_token(delivery_id)[:-1]}x.gif"):
        assert client.get(path).status_code == 404
    assert opens() == 0


def test_the_image_records_one_open(app: Flask, smtp_sink: SmtpSink) -> None:
    prepare(tracking=True)
    message = mail_to(app, smtp_sink, "opener@example.org")
    pixel = PIXEL.search(html_of(message))
    assert pixel is not None
    client = app.test_client()
    assert client.head(local(app, pixel[1])).status_code == 200
    assert opens() == 0
    for _ in range(2):
        answer = client.get(local(app, pixel[1]))
        assert answer.status_code == 200 and answer.mimetype == "image/gif"
        assert answer.data.startswith(b"GIF89a")
        assert answer.headers["Cache-Control"] == "no-store"
    delivery_id = sent_delivery("opener@example.org")
    with db.session() as session:
        assert list(session.scalars(select(Open.delivery_id))) == [delivery_id]
    assert clicks() == []


def funnel_row(editor: FlaskClient, sequence_id: int) -> list[str]:
    page = editor.get(f"/admin/sequences/{sequence_id}/funnel?period=all").get_data(as_text=True)
    head = re.search(r"<thead>(.*?)</thead>", page, re.S)
    row = re.search(r'<tr>\s*<th scope="row">1</th>(.*?)</tr>', page, re.S)
    assert head is not None and row is not None
    names = re.findall(r"<th[^>]*>([^<]+)</th>", head[1])
    cells = re.findall(r'<td class="num">([^<]*)</td>', row[1])
    numeric = [n for n in names if n not in ("Part", "Subject", "Left after it")]
    return [f"{name}={cell}" for name, cell in zip(numeric, cells, strict=True)]


def test_the_funnel_and_flask_results_show_each_parts_opens_and_clicks(
    app: Flask, smtp_sink: SmtpSink, editor: FlaskClient
) -> None:
    sequence_id = prepare(tracking=True)
    client = app.test_client()
    for email, clicked in (("one@example.org", True), ("two@example.org", False)):
        message = mail_to(app, smtp_sink, email)
        pixel = PIXEL.search(html_of(message))
        assert pixel is not None
        client.get(local(app, pixel[1]))
        if clicked:
            for url in tracked_links(app, message):
                client.get(local(app, url))
    mail_to(app, smtp_sink, "three@example.org")
    row = funnel_row(editor, sequence_id)
    assert "Sent=3" in row and "Opened=2" in row and "Clicked=1" in row
    output = app.test_cli_runner().invoke(args=["results"]).output
    assert "left after opened clicked subject" in " ".join(output.split())
    part_one = next(line.split() for line in output.splitlines() if line.split()[:1] == ["1"])
    assert part_one[:8] == ["1", "3", "0", "0", "0", "0", "2", "1"]


def test_the_funnel_of_an_untracked_sequence_has_no_such_columns(
    app: Flask, editor: FlaskClient
) -> None:
    sequence_id = prepare(tracking=False)
    page = editor.get(f"/admin/sequences/{sequence_id}/funnel?period=all").get_data(as_text=True)
    assert "Opened" not in page and "Clicked" not in page


def checkbox(editor: FlaskClient, sequence_id: int) -> str:
    """The settings page's tracking checkbox, as written."""
    page = editor.get(f"/admin/sequences/{sequence_id}/settings").get_data(as_text=True)
    found = re.search(r'<input[^>]*id="tracking"[^>]*>', page)
    assert found is not None and 'type="checkbox"' in found[0]
    return found[0]


def settings(editor: FlaskClient, sequence_id: int, tracking: bool) -> None:
    path = f"/admin/sequences/{sequence_id}/settings"
    data = {
        "csrf_token": csrf_token(editor, path),
        "title": "Emotional Distance",
        "send_hour": "9",
        "send_end_hour": "21",
        "send_days": list("1234567"),
    }
    if tracking:
        data["tracking"] = "y"
    assert editor.post(path, data=data).status_code == 303


def test_an_editor_turns_tracking_on_and_off_and_the_next_mail_follows(
    app: Flask, smtp_sink: SmtpSink, editor: FlaskClient
) -> None:
    sequence_id = prepare(tracking=False)
    assert "checked" not in checkbox(editor, sequence_id)
    settings(editor, sequence_id, tracking=True)
    assert "checked" in checkbox(editor, sequence_id)
    tracked = mail_to(app, smtp_sink, "before@example.org")
    assert len(tracked_links(app, tracked)) == 3

    settings(editor, sequence_id, tracking=False)
    untracked = mail_to(app, smtp_sink, "after@example.org")
    assert tracked_links(app, untracked) == [] and PIXEL.search(html_of(untracked)) is None
    assert FOOTER not in text_of(untracked)
    with db.session() as session:
        entries = session.execute(
            select(AuditEntry.actor_email, AuditEntry.before, AuditEntry.after)
            .where(AuditEntry.action == "sequence.tracking")
            .order_by(AuditEntry.id)
        ).all()
    assert [(before, after) for _, before, after in entries] == [
        ({"tracking": False}, {"tracking": True}),
        ({"tracking": True}, {"tracking": False}),
    ]
    # The earlier mail's link still leads where it did; nothing more is counted.
    client = app.test_client()
    assert client.get(local(app, tracked_links(app, tracked)[0])).headers["Location"] == FIRST
    assert clicks() == []


def test_the_tracking_schema_matches_the_models(app: Flask) -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    ours = [d for d in diff if any(n in repr(d) for n in ("clicks", "opens", "tracking"))]
    assert ours == []


def test_a_persons_data_export_holds_their_opens_and_clicks(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    prepare(tracking=True)
    message = mail_to(app, smtp_sink, "export@example.org")
    pixel = PIXEL.search(html_of(message))
    assert pixel is not None
    client = app.test_client()
    client.get(local(app, pixel[1]))
    client.get(local(app, tracked_links(app, message)[1]))
    with db.session() as session:
        subscriber_id = session.scalars(
            select(Subscriber.id).where(Subscriber.email == "export@example.org")
        ).one()
        data = erasure.personal_data(session, subscriber_id)
    assert data is not None
    part = next(d for d in data["deliveries"] if d["state"] == "sent" and d["kind"] == "step")
    assert part["opened_at"] is not None
    assert [click["link"] for click in part["clicks"]] == [1]
    assert all(d["clicks"] == [] for d in data["deliveries"] if d is not part)


def test_a_templated_part_is_tracked_alike_and_a_name_like_a_stand_in_stays_text(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    prepare(tracking=True)
    with db.transaction() as session:
        step = session.scalars(select(Sequence)).one().steps[0]
        step.body_md = "Hello {{ first_name }}.\n\n" + step.body_md
    hostile = "NLSUBSTCLICK7d1c0x NLSUBSTOPEN7d1c"
    active_subscriber("templated@example.org", name=hostile)
    for delivery_id in claim_all():
        deliver(app, delivery_id)
    message = smtp_sink.to("templated@example.org")[-1]
    links = tracked_links(app, message)
    assert len(links) == 3 and links[0] == links[2] != links[1]
    assert f"Hello {hostile}." in text_of(message) and f"Hello {hostile}." in html_of(message)
    client = app.test_client()
    assert client.get(local(app, links[1])).headers["Location"] == SECOND
