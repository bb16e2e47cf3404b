"""The dashboard and the funnel pages through Flask's test client: the figures they show,
how old they say the figures are, the engine's signals, the period whitelist, escaping and
who may see them. SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from newsletter.audience import figures
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.delivery import breaker, heartbeat
from newsletter.models import CachedFigures, DeliveryState, Event, Sequence, SubscriberStatus
from tests.helpers.admin import create_admin, signed_in
from tests.helpers.apps import base_env, make_app
from tests.helpers.rows import NOW, add_delivery, add_subscriber, build_cohorts
from tests.helpers.smtp import SmtpSink
from tests.helpers.workers import WorkerProcess


@pytest.fixture
def editor(app: Flask, at_time: Callable[[datetime], None]) -> FlaskClient:
    at_time(NOW)
    create_admin(app, "editor@example.org", role="editor")
    return signed_in(app.test_client(), "editor@example.org")


def text_of(client: FlaskClient, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, response.status_code
    return response.get_data(as_text=True)


def figure(page: str, name: str) -> str:
    """The number shown under the heading `name` in the dashboard's list of figures."""
    match = re.search(rf"<dt>{name}</dt><dd>(.*?)</dd>", page)
    assert match, name
    return match.group(1)


def test_the_dashboard_shows_the_counts_their_age_and_the_engine(
    app: Flask, editor: FlaskClient, at_time: Callable[[datetime], None]
) -> None:
    with db.transaction() as session:
        ann = add_subscriber(session, "ann@x.test", created=NOW - timedelta(hours=1))
        add_subscriber(session, "bob@x.test", SubscriberStatus.PENDING)
        add_delivery(session, ann, DeliveryState.SCHEDULED, due=NOW - timedelta(minutes=5))
        add_delivery(session, ann, DeliveryState.FAILED)
        add_delivery(session, ann, DeliveryState.HELD, due=NOW - timedelta(minutes=5))
        add_delivery(session, ann, DeliveryState.SENT, sent=NOW - timedelta(minutes=30))
        session.add(Event(subscriber_id=ann.id, kind="uncertain", created_at=NOW))

    page = text_of(editor, "/admin/dashboard")
    assert "Subscribers: 2<" in page
    assert (figure(page, "Due now"), figure(page, "Failed"), figure(page, "Uncertain")) == (
        "1", "1", "1"
    )  # fmt: skip
    assert figure(page, "Held") == "1"
    assert re.search(r"Figures counted \d+ s ago", page)
    # Today's row of the table: one signup, no confirmation, one mail sent.
    assert re.search(
        r'datetime="2026-11-20">2026-11-20</time></th><td class="num">1</td>'
        r'<td class="num">0</td><td class="num">1</td>',
        page,
    )
    assert "Last dispatch tick: never" in page and "Sending is running" in page
    assert page.count("<svg") == 4 and page.count("<table>") == 2

    # Half a minute on, the same figures are served from the cache, and say how old they are.
    # (The clock runs on after `at_time`: ages are read as "at least", never exactly.)
    with db.session() as session:
        counted_at = session.scalars(select(CachedFigures.computed_at)).one()
    with db.transaction() as session:
        add_subscriber(session, "cid@x.test")
        heartbeat.beat(session, heartbeat.DISPATCH, counted_at + timedelta(seconds=28))
    at_time(counted_at + timedelta(seconds=30))
    page = text_of(editor, "/admin/dashboard")
    assert "Subscribers: 2<" in page
    assert 30 <= seconds(page, r"Figures counted (\d+) s ago") < 60
    assert 2 <= seconds(page, r"Last dispatch tick: (\d+) s ago") < 30
    assert "Is the beat running?" not in page

    # At the maximum age the reader's request counts again; the tick is now late.
    at_time(counted_at + figures.MAX_AGE)
    page = text_of(editor, "/admin/dashboard")
    assert "Subscribers: 3<" in page
    assert seconds(page, r"Figures counted (\d+) s ago") < 30
    assert "Is the beat running?" in page


def seconds(page: str, pattern: str) -> int:
    match = re.search(pattern, page)
    assert match, pattern
    return int(match.group(1))


def test_the_dashboard_says_when_the_breaker_holds_sending(app: Flask, editor: FlaskClient) -> None:
    with db.transaction() as session:
        breaker.hold(session, "40 of the last 50 sends were refused <b>bounced 40</b>", NOW)
    page = text_of(editor, "/admin/dashboard")
    assert "Sending is held by the bounce breaker" in page
    assert "&lt;b&gt;bounced 40&lt;/b&gt;" in page and "<b>bounced" not in page


def test_the_funnel_page_counts_the_chosen_period(app: Flask, editor: FlaskClient) -> None:
    with db.transaction() as session:
        sequence = build_cohorts(session)
        sequence.title = '<script>alert("t")</script> Course'
        sequence_id = sequence.id
    week = text_of(editor, f"/admin/sequences/{sequence_id}/funnel?period=7")
    assert "&lt;script&gt;alert(&#34;t&#34;)&lt;/script&gt; Course" in week
    assert "<script>alert" not in week
    first = re.search(r'<th scope="row">1</th><td>.*?</td>(.*?)</tr>', week, re.S)
    assert first
    numbers = re.findall(r'<td class="num">([^<]*)</td>', first.group(1))
    # sent, drop-off, to go, failed, skipped, left: unsubscribed, bounced, complained
    assert numbers == ["2", "—", "0", "0", "0", "1", "0", "0"]
    assert '<option value="7" selected>' in week
    assert "1 active, 0 completed, 1 stopped" in week
    everyone = text_of(editor, f"/admin/sequences/{sequence_id}/funnel?period=all")
    assert re.search(r'<th scope="row">1</th><td>.*?</td>\s*<td class="num">5</td>', everyone)
    assert re.search(r'<th scope="row">2</th><td>.*?</td>\s*<td class="num">2</td>\s*'
                     r'<td class="num">60%</td>', everyone)  # fmt: skip
    default = text_of(editor, f"/admin/sequences/{sequence_id}/funnel")
    assert '<option value="30" selected>' in default


def test_an_unknown_period_is_refused_beside_the_field(app: Flask, editor: FlaskClient) -> None:
    with db.session() as session:
        sequence_id = session.scalars(select(Sequence.id)).one()
    page = text_of(
        editor, f"/admin/sequences/{sequence_id}/funnel?period=1%3B%20DROP%20TABLE", status=400
    )
    assert 'aria-invalid="true"' in page and "Choose one of the periods in the list." in page
    assert '<option value="30" selected>' in page
    with db.session() as session:
        assert session.scalars(select(CachedFigures.key)).all() == [f"funnel:{sequence_id}:30"]
    text_of(editor, "/admin/sequences/999999/funnel", status=404)


def test_strangers_are_sent_to_sign_in_and_the_admin_home_is_the_dashboard(
    app: Flask, editor: FlaskClient
) -> None:
    stranger = app.test_client()
    for path in ("/admin/dashboard", "/admin/sequences/1/funnel"):
        response = stranger.get(path)
        assert response.status_code == 302 and "/admin/sign-in" in response.headers["Location"]
    home = editor.get("/admin/")
    assert home.status_code == 302 and home.headers["Location"] == "/admin/dashboard"
    assert 'href="/admin/dashboard" aria-current="page">Dashboard' in text_of(
        editor, "/admin/dashboard"
    )


@pytest.mark.slow
@pytest.mark.redis
def test_a_stale_funnel_page_is_counted_again_by_a_real_worker(
    tmp_path: Path,
    sqlite_url: str,
    redis_url: str,
    smtp_sink: SmtpSink,
    run_worker: Callable[..., WorkerProcess],
    at_time: Callable[[datetime], None],
) -> None:
    """The page serves the stale funnel at once and queues its count; a worker does it."""
    env = base_env(tmp_path, sqlite_url, smtp_sink, BROKER_URL=redis_url, REDIS_URL=redis_url)
    app = make_app(env)
    at_time(NOW)
    with db.transaction() as session:
        ensure_seed(session)
        sequence_id = build_cohorts(session).id
    create_admin(app, "editor@example.org", role="editor")
    editor = signed_in(app.test_client(), "editor@example.org")
    path = f"/admin/sequences/{sequence_id}/funnel?period=all"
    sent_of_part_one = re.compile(r'<th scope="row">1</th><td>.*?</td>\s*<td class="num">(\d+)<')

    def part_one(page: str) -> str:
        match = sent_of_part_one.search(page)
        assert match, page
        return match.group(1)

    assert part_one(text_of(editor, path)) == "5"
    key = figures.funnel_key(sequence_id, "all")
    with db.transaction() as session:
        row = session.get(CachedFigures, key)
        assert row is not None
        # A number no count gives: the page below shows the stored funnel, not a new count.
        row.data = {**row.data, "parts": [{**row.data["parts"][0], "sent": 999}]}
    at_time(NOW + figures.FUNNEL_MAX_AGE + timedelta(minutes=1))
    stale = text_of(editor, path)
    assert part_one(stale) == "999" and "being counted again" in stale
    run_worker(env, beat=False, concurrency=1)
    deadline = time.monotonic() + 120  # a guard against a worker that never starts
    while True:
        with db.session() as session:
            row = session.get(CachedFigures, key)
            assert row is not None
            if len(row.data["parts"]) == 4:
                counted_at = row.computed_at
                break
        assert time.monotonic() < deadline, "the recount never ran"
        time.sleep(0.2)
    at_time(counted_at + timedelta(seconds=1))
    # The worker counted on the real clock, days after the test's: a new sign-in, since the
    # idle timeout ended the old one.
    editor = signed_in(app.test_client(), "editor@example.org")
    fresh = text_of(editor, path)
    assert part_one(fresh) == "5" and "being counted again" not in fresh
