"""The preferences page in a real browser (headless Chromium through Playwright): a reader
follows the link in the mail that arrived, changes their time zone and hour, pauses,
resumes both ways, restarts, joins another series, downloads their data and deletes
themselves; once with the mouse, once with the keyboard only; axe-core on every state.

With UPDATE_SCREENSHOTS=1 the README's picture of the page at phone width (375 px) is
written to docs/screenshots/preferences-phone.png.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy import select

from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import Delivery, DeliveryState, Subscriber, SubscriberStatus
from tests.helpers.apps import base_env, make_app
from tests.helpers.axe import violations
from tests.helpers.catalogue import other_sequence
from tests.helpers.mailparse import text_of
from tests.helpers.ports import free_port
from tests.helpers.sending import send_part_one
from tests.helpers.serving import serving
from tests.helpers.smtp import SmtpSink

pytestmark = pytest.mark.browser

NOON = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
EMAIL = "reader@example.org"


@pytest.fixture
def site(
    tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink, at_time: Any
) -> Iterator[tuple[str, Flask]]:
    """The app (SQLite, seed imported, real days) on a real HTTP server; (its URL, the app)."""
    at_time(NOON)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = make_app(base_env(tmp_path, sqlite_url, smtp_sink, SITE_URL=url))
    with db.transaction() as session:
        ensure_seed(session)
    with serving(app, port):
        yield url, app
    db.dispose()


def preferences_link(app: Flask, smtp_sink: SmtpSink, url: str) -> str:
    """Part 1 goes out through the send path; the preferences link of the mail that arrived."""
    send_part_one(app, EMAIL)
    mail = next(m for m in smtp_sink.to(EMAIL) if "Part 1 of" in text_of(m))
    match = re.search(r"https?://\S+/preferences/[A-Za-z0-9._\-]+", text_of(mail))
    assert match and match.group(0).startswith(f"{url}/preferences/"), text_of(mail)
    return match.group(0)


def next_part() -> tuple[DeliveryState, datetime]:
    with db.session() as session:
        row = session.scalars(
            select(Delivery)
            .where(Delivery.state.in_((DeliveryState.SCHEDULED, DeliveryState.HELD)))
            .order_by(Delivery.id.desc())
        ).first()
        assert row is not None
        return row.state, row.due_at


def accessible(page: Page) -> None:
    """axe-core finds nothing serious or critical; one h1 and a main landmark."""
    bad = [v for v in violations(page) if v["impact"] in ("serious", "critical")]
    assert bad == [], [(v["id"], v["help"]) for v in bad]
    expect(page.locator("h1")).to_have_count(1)
    expect(page.get_by_role("main")).to_have_count(1)


def tab_to(page: Page, name: str) -> None:
    """Press Tab until the focused control's text, label or id is `name` (keyboard only)."""
    for _ in range(200):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => { const e = document.activeElement;
                return [e.id, (e.innerText || '').trim(),
                        e.labels && e.labels[0] ? e.labels[0].innerText.trim() : ''] }"""
        )
        if name in focused:
            return
    raise AssertionError(f"{name!r} is not reachable with Tab")


def test_the_whole_journey_with_the_mouse_and_axe_on_every_state(
    site: tuple[str, Flask], smtp_sink: SmtpSink, new_page: Callable[..., Page], at_time: Any
) -> None:
    url, app = site
    other_sequence("Second Course")
    link = preferences_link(app, smtp_sink, url)
    page = new_page(accept_downloads=True)
    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text("Your preferences")
    accessible(page)
    page.get_by_label("Time zone").select_option("America/New_York")
    page.get_by_label("Preferred send hour (your local time)").select_option("15")
    page.get_by_role("button", name="Save time zone and hour").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    expect(page.get_by_text("Thu 11 Jun, 15:00 (America/New_York)")).to_be_visible()
    assert next_part() == (DeliveryState.SCHEDULED, datetime(2026, 6, 11, 19, tzinfo=UTC))
    accessible(page)
    # A refusal beside its field: the page's own choices cannot be wrong, a forged one can.
    page.evaluate(
        """() => { const o = document.createElement('option');
            o.value = o.textContent = 'Mars/Olympus';
            document.getElementById('time_zone').append(o); }"""
    )
    page.get_by_label("Time zone").select_option("Mars/Olympus")
    page.get_by_role("button", name="Save time zone and hour").click()
    expect(page.locator("#error-time_zone")).to_have_text("Choose a time zone from the list.")
    expect(page.get_by_label("Time zone")).to_have_attribute("aria-invalid", "true")
    accessible(page)
    assert next_part() == (DeliveryState.SCHEDULED, datetime(2026, 6, 11, 19, tzinfo=UTC))
    page.goto(link)
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_contain_text("Paused")
    assert next_part()[0] is DeliveryState.HELD
    accessible(page)
    page.get_by_role("button", name="Resume where I left off").click()
    expect(page.get_by_role("status")).to_contain_text("Resumed")
    assert next_part() == (DeliveryState.SCHEDULED, datetime(2026, 6, 11, 19, tzinfo=UTC))
    page.get_by_role("button", name="Pause").click()
    page.get_by_role("button", name="Catch up").click()
    expect(page.get_by_role("status")).to_contain_text("Resumed")
    # Catching up the same day still waits for tomorrow: part 1 came today.
    assert next_part()[1] >= datetime(2026, 6, 11, 4, tzinfo=UTC)
    accessible(page)
    page.get_by_role("button", name="Restart from part 1").click()
    expect(page.get_by_role("status")).to_contain_text("Restarted")
    page.get_by_label("Series", exact=True).select_option(label="Second Course")
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("status")).to_contain_text("new series")
    expect(page.get_by_role("heading", name="Second Course")).to_be_visible()
    accessible(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download my data").click()
    data = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert data["subscriber"]["email"] == EMAIL
    page.get_by_role("link", name="Delete me").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delete me")
    accessible(page)
    with db.session() as session:
        assert session.scalars(select(Subscriber.status)).one() is SubscriberStatus.ACTIVE
    page.get_by_role("button", name="Yes, delete everything").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You are deleted")
    accessible(page)
    with db.session() as session:
        sub = session.scalars(select(Subscriber)).one()
        assert sub.erased_at is not None and sub.email != EMAIL
    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text("That link did not work")
    accessible(page)


def test_the_journey_with_the_keyboard_only(
    site: tuple[str, Flask], smtp_sink: SmtpSink, new_page: Callable[..., Page]
) -> None:
    url, app = site
    other_sequence("Second Course")
    link = preferences_link(app, smtp_sink, url)
    page = new_page(accept_downloads=True)
    page.goto(link)
    tab_to(page, "time_zone")
    page.keyboard.type("Europe/Paris")
    expect(page.locator("#time_zone")).to_have_value("Europe/Paris")
    tab_to(page, "send_hour")
    page.keyboard.type("10:00")
    expect(page.locator("#send_hour")).to_have_value("10")
    tab_to(page, "Save time zone and hour")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Saved")
    # Paris is UTC+2 in June: 10:00 there is 08:00 UTC on their next day.
    assert next_part() == (DeliveryState.SCHEDULED, datetime(2026, 6, 11, 8, tzinfo=UTC))
    for button, said in (
        ("Pause", "Paused"),
        ("Catch up", "Resumed"),
        ("Pause", "Paused"),
        ("Resume where I left off", "Resumed"),
        ("Restart from part 1", "Restarted"),
    ):
        tab_to(page, button)
        page.keyboard.press("Enter")
        expect(page.get_by_role("status")).to_contain_text(said)
    tab_to(page, "sequence")
    page.keyboard.type("Second")
    expect(page.locator("#sequence")).to_have_value(re.compile(r"\d+"))
    tab_to(page, "Join")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Second Course")).to_be_visible()
    tab_to(page, "Leave (unsubscribe)")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_contain_text("nsubscribed")
    with db.session() as session:
        assert session.scalars(select(Subscriber.status)).one() is SubscriberStatus.UNSUBSCRIBED
    page.goto(link)
    expect(page.get_by_text("You have left")).to_be_visible()
    accessible(page)
    tab_to(page, "Download my data")
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    assert json.loads(Path(download.value.path()).read_text(encoding="utf-8"))["consent"]
    tab_to(page, "Delete me")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Delete me")
    tab_to(page, "Yes, delete everything")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("You are deleted")
    with db.session() as session:
        assert session.scalars(select(Subscriber.erased_at)).one() is not None


def test_a_phone_sized_screenshot_of_the_page(
    site: tuple[str, Flask],
    smtp_sink: SmtpSink,
    new_page: Callable[..., Page],
    screenshot_dir: Path,
) -> None:
    url, app = site
    other_sequence("Second Course")
    link = preferences_link(app, smtp_sink, url)
    page = new_page(viewport={"width": 375, "height": 812}, device_scale_factor=2)
    page.goto(link)
    accessible(page)
    # Nothing wider than the phone: no sideways scrolling.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(screenshot_dir / "preferences-phone.png"), full_page=True)
