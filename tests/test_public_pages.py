"""The public pages' words and states through Flask's test client: what the signup page says
of the series, when the confirmed page says part 2 comes, the archive's promise, the reason
for leaving, and the error pages. SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.content.overview import overview
from newsletter.db import db
from newsletter.models import Event, Sequence, Subscriber
from newsletter.web.when import when
from tests.helpers.apps import base_env, make_app, runtime_of
from tests.helpers.sending import active_subscriber, claim_all, deliver
from tests.helpers.smtp import SmtpSink
from tests.helpers.webclient import confirm, csrf, post_signup

WEDNESDAY_NOON_BERLIN = datetime(2026, 6, 10, 10, 0, tzinfo=UTC)


def text(page: str) -> str:
    """The page's words, tags removed and spaces collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


# -- when ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("due", "words"),
    [
        (datetime(2026, 6, 10, 16, 30, tzinfo=UTC), "today at 18:30 (Europe/Berlin time)"),
        (datetime(2026, 6, 11, 7, 0, tzinfo=UTC), "tomorrow at 09:00 (Europe/Berlin time)"),
        (datetime(2026, 6, 12, 7, 0, tzinfo=UTC), "on Friday at 09:00 (Europe/Berlin time)"),
        (
            datetime(2026, 6, 22, 7, 0, tzinfo=UTC),
            "on Monday 22 June at 09:00 (Europe/Berlin time)",
        ),
        # 23:30 UTC is already tomorrow in Berlin.
        (datetime(2026, 6, 10, 23, 30, tzinfo=UTC), "tomorrow at 01:30 (Europe/Berlin time)"),
    ],
)
def test_when_speaks_the_readers_calendar(due: datetime, words: str) -> None:
    assert when(due, WEDNESDAY_NOON_BERLIN, "Europe/Berlin", 86400) == words


def test_when_is_a_duration_on_a_shortened_day() -> None:
    now = WEDNESDAY_NOON_BERLIN
    assert when(now + timedelta(seconds=40), now, "UTC", 60) == "in about 40 seconds"
    assert when(now + timedelta(minutes=3), now, "UTC", 60) == "in about 3 minutes"
    assert when(now + timedelta(minutes=1), now, "UTC", 60) == "in about 60 seconds"
    assert when(now + timedelta(hours=5), now, "UTC", 600) == "in about 5 hours"
    assert when(now - timedelta(seconds=5), now, "UTC", 60) == "in about 0 seconds"


# -- the signup page -------------------------------------------------------------------------


def test_the_signup_page_says_how_many_parts_and_gives_a_taste(app: Flask) -> None:
    page = app.test_client().get("/").get_data(as_text=True)
    words = text(page)
    assert "A free course by email in 4 parts" in words
    assert re.search(r"then one part a day, each about \d+ minutes? of reading\.", words)
    taste = re.search(r'<figure class="taste">\s*<blockquote><p>(.*?)</p>', page, re.S)
    assert taste and taste.group(1) == (
        "Emotional distance rarely comes out of nowhere. In most relationships, it builds "
        "quietly — even when both people still care. No big argument. No clear turning point. "
        "Just a gradual shift where closeness starts to feel harder to reach."
    )  # the opening paragraphs, until about 200 characters


@pytest.mark.any_database
def test_the_taste_is_plain_text_of_the_opening(app: Flask) -> None:
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        sequence.steps[0].body_md = (
            "{% if first_name %}Dear {{ first_name }},{% endif %} **Closeness** is "
            "<script>alert(1)</script>*learned*, `slowly`\nand [on purpose](https://e.org).\n\n"
            "Second paragraph.\n\n## A section\n\nNot the opening any more."
        )
        about = overview(sequence)
    assert about is not None
    assert about.taste == "Closeness is alert(1)learned, slowly and on purpose. Second paragraph."
    # Through the mail's renderer (as the page does), a nameless reader's words.
    composer = runtime_of(app).composer
    with db.session() as session:
        sequence = session.scalars(select(Sequence)).one()
        rendered = overview(sequence, lambda s: composer.admin_text.render(s, first_name=""))
    assert rendered is not None and rendered.taste == about.taste
    page = app.test_client().get("/").get_data(as_text=True)
    assert "<script>alert" not in page and "Closeness is alert(1)learned" in page


def test_the_signup_page_follows_an_edit_of_part_one(app: Flask) -> None:
    """The page keeps the series' overview between views, and counts it again after an edit."""
    client = app.test_client()
    assert "Emotional distance rarely comes out of nowhere." in client.get("/").get_data(
        as_text=True
    )
    with db.transaction() as session:
        session.scalars(select(Sequence)).one().steps[0].body_md = "Edited opening."
    page = client.get("/").get_data(as_text=True)
    assert "<blockquote><p>Edited opening.</p></blockquote>" in page
    assert "rarely comes out of nowhere" not in page


@pytest.mark.any_database
def test_a_long_opening_is_cut_at_a_word(app: Flask) -> None:
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        sequence.steps[0].body_md = "word " * 200
        about = overview(sequence)
    assert about is not None
    assert about.taste.endswith("word…") and len(about.taste) <= 321


def test_a_refused_signup_says_so_in_the_title_and_focuses_the_field(app: Flask) -> None:
    status, _, page = post_signup(app.test_client(), "not-an-address")
    assert status == 400
    title = re.search(r"<title>(.*?)</title>", page, re.S)
    assert title and title.group(1).startswith("Error: check the form")
    field = re.search(r'<input[^>]*id="email"[^>]*>', page)
    assert field and "autofocus" in field.group(0) and 'aria-invalid="true"' in field.group(0)
    first_name = re.search(r'<input[^>]*id="first_name"[^>]*>', page)
    assert first_name and "autofocus" not in first_name.group(0)
    fresh = app.test_client().get("/").get_data(as_text=True)
    assert "autofocus" not in fresh and "<title>Error" not in fresh


# -- confirmed: when part 2 comes ----------------------------------------------------------------


def test_the_confirmed_page_says_when_part_two_comes_in_the_readers_time(
    app: Flask, at_time: Callable[[datetime], None]
) -> None:
    at_time(WEDNESDAY_NOON_BERLIN)
    client = app.test_client()
    post_signup(client, "ada@example.org", time_zone="Europe/Berlin")
    with db.session() as session:
        ada = session.scalars(select(Subscriber)).one()
    token = runtime_of(app).tokens.confirm_token(ada.id, ada.email)
    page = confirm(client, f"/confirm/{token}").get_data(as_text=True)
    words = text(page)
    assert "part one is on its way to your inbox now" in words
    assert (
        "Part 2 of 4 follows tomorrow at 09:00 (Europe/Berlin time), and the rest after it, "
        "one part a day." in words
    )
    assert "arrives tomorrow" not in words


def test_the_confirmed_page_follows_a_chosen_send_hour(
    app: Flask, at_time: Callable[[datetime], None]
) -> None:
    """Someone who chose an hour (on the preferences page, before leaving and coming back)
    is told the hour they chose, as the planner will use it."""
    at_time(WEDNESDAY_NOON_BERLIN)
    client = app.test_client()
    post_signup(client, "ida@example.org", time_zone="Europe/Berlin")
    with db.transaction() as session:
        ida = session.scalars(select(Subscriber)).one()
        ida.send_hour = 15
        ida_id, ida_email = ida.id, ida.email
    token = runtime_of(app).tokens.confirm_token(ida_id, ida_email)
    words = text(confirm(client, f"/confirm/{token}").get_data(as_text=True))
    assert "Part 2 of 4 follows tomorrow at 15:00 (Europe/Berlin time)" in words


def test_on_a_shortened_day_the_confirmed_page_gives_a_duration(
    tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink
) -> None:
    """A demo day of 120 s: part 2 (one day later) comes in about two minutes, not
    "tomorrow"."""
    from newsletter.content.sequences import ensure_seed

    make_app(base_env(tmp_path, sqlite_url, smtp_sink, DRIP_DAY_SECONDS="120"))
    with db.transaction() as session:
        ensure_seed(session)
    app = make_app(base_env(tmp_path, sqlite_url, smtp_sink, DRIP_DAY_SECONDS="120"))
    client = app.test_client()
    post_signup(client, "bo@example.org")
    with db.session() as session:
        bo = session.scalars(select(Subscriber)).one()
    token = runtime_of(app).tokens.confirm_token(bo.id, bo.email)
    words = text(confirm(client, f"/confirm/{token}").get_data(as_text=True))
    assert "Part 2 of 4 follows in about 2 minutes" in words
    assert "tomorrow" not in words


# -- the archive ---------------------------------------------------------------------------------


def archive_words(app: Flask, subscriber_id: int) -> str:
    token = runtime_of(app).tokens.reader_token(subscriber_id)
    return text(app.test_client().get(f"/read/{token}").get_data(as_text=True))


def send_all_due(app: Flask) -> None:
    for delivery_id in claim_all():
        deliver(app, delivery_id)


def test_the_archive_promises_more_only_while_more_will_come(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    cy = active_subscriber("cy@example.org")
    send_all_due(app)
    words = archive_words(app, cy)
    title = "Emotional Distance: Why It Happens and What Brings Closeness Back"
    # Part 1's subject is the series' title, already the heading: not said twice.
    assert f"{title} Part 1 of 4 The next part comes by mail" in words
    assert words.count(title) == 1
    with db.transaction() as session:
        subscriptions.unsubscribe(session, cy, clock.now(), "test")
    assert "No more parts of this series will come." in archive_words(app, cy)
    assert "The next part comes by mail" not in archive_words(app, cy)


def test_after_the_last_part_the_archive_says_it_is_all_there(
    app: Flask, smtp_sink: SmtpSink, at_time: Callable[[datetime], None]
) -> None:
    moment = WEDNESDAY_NOON_BERLIN
    at_time(moment)
    di = active_subscriber("di@example.org")
    for _ in range(4):
        send_all_due(app)
        moment += timedelta(days=1)
        at_time(moment)
    words = archive_words(app, di)
    assert "Part 4 of 4" in words and "You have every part of this series." in words
    assert "The next part comes by mail" not in words


def test_the_view_in_browser_page_has_a_main_landmark_and_one_heading(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    ed = active_subscriber("ed@example.org")
    send_all_due(app)
    token = runtime_of(app).tokens.reader_token(ed)
    archive = app.test_client().get(f"/read/{token}").get_data(as_text=True)
    part = re.search(r'href="(/read/[^"]+/\d+)"', archive)
    assert part
    page = app.test_client().get(part.group(1)).get_data(as_text=True)
    assert page.count("<main>") == 1 and page.count("</main>") == 1
    headings = re.findall(r"<h1[^>]*>(.*?)</h1>", page, re.S)
    assert headings == ["Emotional Distance: Why It Happens and What Brings Closeness Back"]
    mail = smtp_sink.messages[-1].get_body(("html",))
    assert mail is not None and "<main>" not in mail.get_content()  # the mail is not a page


# -- leaving, and why ------------------------------------------------------------------------


def unsubscribed_page(app: Flask, subscriber_id: int) -> tuple[str, str]:
    """Unsubscribe through the page's button; (the unsubscribe token, the answer page)."""
    client = app.test_client()
    token = runtime_of(app).tokens.unsubscribe_token(subscriber_id)
    path = f"/unsubscribe/{token}"
    page = client.post(path, data={"csrf_token": csrf(client, path)}).get_data(as_text=True)
    return token, page


def reasons(subscriber_id: int) -> list[dict[str, str]]:
    with db.session() as session:
        return [
            e.data
            for e in session.scalars(
                select(Event).where(
                    Event.subscriber_id == subscriber_id, Event.kind == "leaving_reason"
                )
            )
        ]


def test_someone_who_left_may_say_why_once(app: Flask, smtp_sink: SmtpSink) -> None:
    fa = active_subscriber("fa@example.org")
    token, page = unsubscribed_page(app, fa)
    assert "You're unsubscribed" in page and "sign up again" in page
    assert 'value="too-many"' in page
    client = app.test_client()
    path = f"/unsubscribe/{token}/reason"
    form = f"/unsubscribe/{token}"
    hostile = "<b>too</b>\r\nBcc: x@evil.example {{ config }} " + "x" * 900
    answer = client.post(
        path, data={"csrf_token": csrf(client, form), "reason": "too-many", "detail": hostile}
    )
    assert answer.status_code == 400  # longer than 500 characters: refused beside the field
    assert reasons(fa) == []
    answer = client.post(
        path,
        data={"csrf_token": csrf(client, form), "reason": "too-many", "detail": hostile[:400]},
    )
    assert answer.status_code == 200 and "Thank you" in answer.get_data(as_text=True)
    [kept] = reasons(fa)
    assert kept["reason"] == "too-many"
    assert kept["detail"].startswith("<b>too</b> Bcc: x@evil.example {{ config }} xxx")
    client.post(path, data={"csrf_token": csrf(client, form), "reason": "no-time"})
    assert [r["reason"] for r in reasons(fa)] == ["no-time"]  # replaced, not added


@pytest.mark.parametrize("reason", ["", "because", "too-many' OR 1=1"])
def test_a_reason_not_offered_is_refused_and_keeps_nothing(
    app: Flask, smtp_sink: SmtpSink, reason: str
) -> None:
    gi = active_subscriber("gi@example.org")
    token, _ = unsubscribed_page(app, gi)
    client = app.test_client()
    answer = client.post(
        f"/unsubscribe/{token}/reason",
        data={"csrf_token": csrf(client, f"/unsubscribe/{token}"), "reason": reason},
    )
    page = answer.get_data(as_text=True)
    assert answer.status_code == 400 and 'role="alert"' in page
    assert re.search(r"<title>Error: check the form", page)
    assert reasons(gi) == []


def test_someone_still_subscribed_is_asked_nothing(app: Flask, smtp_sink: SmtpSink) -> None:
    ha = active_subscriber("ha@example.org")
    token = runtime_of(app).tokens.unsubscribe_token(ha)
    client = app.test_client()
    answer = client.post(
        f"/unsubscribe/{token}/reason",
        data={"csrf_token": csrf(client, f"/unsubscribe/{token}"), "reason": "too-many"},
    )
    assert answer.status_code == 404 and reasons(ha) == []
    with db.session() as session:
        assert session.get(Subscriber, ha).status.value == "active"  # type: ignore[union-attr]


# -- error pages -----------------------------------------------------------------------------


@pytest.mark.any_database
@pytest.mark.parametrize(
    ("method", "path", "status", "heading"),
    [
        ("get", "/no-such-page", 404, "Page not found"),
        ("get", "/read/forged-token", 404, "Page not found"),
        ("put", "/", 405, "That request did not work"),
        ("get", "/?sequence=Bad%20Slug", 400, "That signup link did not work"),
    ],
)
def test_errors_answer_with_our_page(
    app: Flask, method: str, path: str, status: int, heading: str
) -> None:
    response = getattr(app.test_client(), method)(path)
    page = response.get_data(as_text=True)
    assert response.status_code == status
    assert re.search(rf"<h1>{heading}</h1>", page) and '<main class="page">' in page
    assert "Werkzeug" not in page and "<title>404 Not Found</title>" not in page
    assert response.headers["Content-Security-Policy"]


@pytest.mark.any_database
def test_an_unhandled_error_is_logged_and_answered_with_our_page(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> str:
        raise RuntimeError("the disk is full <b>")

    app.add_url_rule("/broken-for-the-test", "broken_for_the_test", broken)
    app.config["TESTING"] = False  # as in production: the error becomes a 500 page
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = app.test_client().get("/broken-for-the-test")
    page = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "<h1>Something went wrong on our side</h1>" in page
    assert "the disk is full" not in page  # the reason is for the log, not the visitor
    assert "the disk is full" in caplog.text


def test_too_many_signups_get_our_page(
    tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink
) -> None:
    from newsletter.content.sequences import ensure_seed

    app = make_app(base_env(tmp_path, sqlite_url, smtp_sink, SIGNUP_RATE_LIMIT="2 per minute"))
    with db.transaction() as session:
        ensure_seed(session)
    client = app.test_client()
    answers = [post_signup(client, f"r{n}@example.org") for n in range(3)]
    assert [status for status, _, _ in answers] == [303, 303, 429]
    page = answers[-1][2]
    assert "<h1>Too many requests</h1>" in page and "Wait a few minutes" in page
