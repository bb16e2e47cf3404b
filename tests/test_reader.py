"""View in browser and the archive: a subscriber reads what was sent, and nothing ahead."""

from __future__ import annotations

import re

from flask import Flask
from sqlalchemy import select

from newsletter.db import db
from newsletter.models import Delivery, DeliveryState
from tests.helpers.apps import runtime_of
from tests.helpers.mailparse import html_of, text_of
from tests.helpers.sending import active_subscriber, send_part_one
from tests.helpers.smtp import SmtpSink


def test_the_mail_links_to_itself_and_to_the_archive(app: Flask, smtp_sink: SmtpSink) -> None:
    subscriber_id = send_part_one(app, "reader@example.org")
    message = smtp_sink.messages[-1]
    composer = runtime_of(app).composer
    archive = composer.reader_url(subscriber_id)
    view = re.search(r'href="([^"]+)"[^>]*>View in browser<', html_of(message))
    assert view is not None and view.group(1).startswith(archive + "/")
    assert f'href="{archive}"' in html_of(message)
    assert f"Read it in a browser: {view.group(1)}" in text_of(message)

    client = app.test_client()
    site = runtime_of(app).settings.site_url
    page = client.get(view.group(1).removeprefix(site))
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "Part 1 of 4" in body and "Hi Ann," in body
    assert "View in browser" not in body  # the page is the browser view
    assert page.headers["Cache-Control"] == "private, no-store"

    listing = client.get(archive.removeprefix(site)).get_data(as_text=True)
    assert listing.count("<li>") == 1 and "Part 1 of 4" in listing


def test_parts_not_yet_sent_and_other_peoples_links_are_not_found(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    mine = send_part_one(app, "mine@example.org")
    composer = runtime_of(app).composer
    site = runtime_of(app).settings.site_url
    client = app.test_client()
    with db.session() as session:
        sent_step = session.scalars(
            select(Delivery.step_id).where(
                Delivery.subscriber_id == mine, Delivery.state == DeliveryState.SENT
            )
        ).one()
    assert sent_step is not None
    assert client.get(composer.reader_url(mine, sent_step).removeprefix(site)).status_code == 200
    assert (
        client.get(composer.reader_url(mine, sent_step + 1).removeprefix(site)).status_code == 404
    )
    forged = composer.reader_url(mine).removeprefix(site)[:-3] + "xyz"
    assert client.get(forged).status_code == 404
    unsubscribe_token = composer.unsubscribe_url(mine).rsplit("/", 1)[1]
    assert client.get(f"/read/{unsubscribe_token}").status_code == 404  # a different salt
    nobody = active_subscriber("nobody@example.org")  # confirmed, nothing sent yet
    page = client.get(composer.reader_url(nobody).removeprefix(site)).get_data(as_text=True)
    assert "Nothing has been sent to you yet" in page
