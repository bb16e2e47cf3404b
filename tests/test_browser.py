"""The public pages in a real browser (headless Chromium through Playwright).

The app runs on a real HTTP server in a thread, the mail is sent by a real Celery worker and
beat, and the links a reader follows are the ones in the mail that arrived.
"""

from __future__ import annotations

import mailbox
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy import func, select

from newsletter import mailcatcher
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Event,
    Step,
    Subscriber,
    SubscriberStatus,
)
from tests.helpers.apps import base_env, make_app
from tests.helpers.env import ROOT
from tests.helpers.mailparse import html_of
from tests.helpers.ports import free_port
from tests.helpers.sending import send_part_one
from tests.helpers.serving import serving
from tests.helpers.smtp import SmtpSink
from tests.helpers.workers import WorkerProcess

pytestmark = pytest.mark.browser

DAY = 3.0  # DRIP_DAY_SECONDS: a whole series plays out in seconds
TICK = 0.5  # DISPATCH_INTERVAL_SECONDS
ARTIFACTS = ROOT / "test-artifacts"


# -- fixtures ------------------------------------------------------------------------------------


@dataclass
class Site:
    """The app served over HTTP at `url`, built from `env`."""

    url: str
    env: dict[str, str]
    app: Flask


@pytest.fixture
def start_site(
    tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink
) -> Iterator[Callable[..., Site]]:
    """Build the app (SQLite, seed imported) and serve it on 127.0.0.1 in a thread.

    SITE_URL is the server's own address, so the links in mail lead back to it.
    """
    servers = ExitStack()

    def _start(**extra: str) -> Site:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        settings = {
            "SITE_URL": url,
            "DEV_MAIL_DIR": str(tmp_path / "maildir"),
            "DRIP_DAY_SECONDS": str(DAY),
            "DISPATCH_INTERVAL_SECONDS": str(TICK),
            **extra,
        }
        env = base_env(tmp_path, sqlite_url, smtp_sink, **settings)
        app = make_app(env)
        with db.transaction() as session:
            ensure_seed(session)
        servers.enter_context(serving(app, port))
        return Site(url, env, app)

    with servers:
        yield _start
    db.dispose()


# -- helpers -------------------------------------------------------------------------------------


def sign_up(page: Page, site: Site, email: str, first_name: str = "") -> None:
    """Fill in and submit the signup form; the browser lands on "Check your inbox"."""
    page.goto(f"{site.url}/")
    page.get_by_label("Email address").fill(email)
    if first_name:
        page.get_by_label("First name (optional)").fill(first_name)
    page.get_by_role("button", name="Send me part one").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    assert page.url == f"{site.url}/thanks"


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None, "message has no text/plain part"
    return str(part.get_content())


def confirm_url_in(text: str, site: Site) -> str:
    match = re.search(r"https?://\S+/confirm/[A-Za-z0-9._\-]+", text)
    assert match, f"no /confirm/ link in:\n{text}"
    assert match.group(0).startswith(f"{site.url}/confirm/"), "link does not point at SITE_URL"
    return match.group(0)


def unsubscribe_url_of(msg: EmailMessage, site: Site) -> str:
    header = str(msg["List-Unsubscribe"])
    match = re.search(r"<(https?://[^>]+)>", header)
    assert match, f"no http(s) URL in List-Unsubscribe: {header!r}"
    assert match.group(1).startswith(f"{site.url}/unsubscribe/"), header
    return match.group(1)


def is_confirmation(msg: EmailMessage) -> bool:
    return str(msg["Subject"]).startswith("Confirm your subscription")


def part_of(msg: EmailMessage) -> int | None:
    """k of the "Part k of N" line, or None for a mail that is not a part."""
    match = re.search(r"Part (\d+) of \d+", text_of(msg))
    return int(match.group(1)) if match else None


def subscriber(email: str) -> Subscriber:
    with db.session() as session:
        found = session.scalar(select(Subscriber).where(Subscriber.email == email))
    assert found is not None, f"no subscriber row for {email}"
    return found


def count(model: Any) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


# -- tests ---------------------------------------------------------------------------------------


def test_signup_records_browser_time_zone_and_consent(
    start_site: Callable[..., Site], new_page: Callable[..., Page]
) -> None:
    site = start_site()
    page = new_page(timezone_id="America/Chicago")
    page.goto(f"{site.url}/")
    # signup.js fills the hidden field with the zone the browser reports.
    expect(page.locator("input#time_zone")).to_have_value("America/Chicago")
    user_agent = page.evaluate("navigator.userAgent")

    page.get_by_label("Email address").fill("Carla@Example.org")
    page.get_by_label("First name (optional)").fill("Carla")
    page.get_by_role("button", name="Send me part one").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    assert page.url == f"{site.url}/thanks"

    row = subscriber("carla@example.org")
    assert row.status is SubscriberStatus.PENDING
    assert row.first_name == "Carla"
    assert row.time_zone == "America/Chicago"
    assert row.consent_ip == "127.0.0.1"
    assert row.consent_user_agent == user_agent
    assert row.consent_at is not None
    assert row.consent_form == "signup-page"
    with db.session() as session:
        queued = session.scalars(select(Delivery).where(Delivery.subscriber_id == row.id)).all()
    assert [(d.kind, d.state) for d in queued] == [(DeliveryKind.CONFIRM, DeliveryState.SCHEDULED)]


def test_invalid_address_is_refused_next_to_the_field(
    start_site: Callable[..., Site], new_page: Callable[..., Page]
) -> None:
    site = start_site()
    page = new_page()
    page.goto(f"{site.url}/")
    page.get_by_label("Email address").fill("not-an-address")
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.startswith(f"{site.url}/")
    ) as response_info:
        page.get_by_role("button", name="Send me part one").click()
    assert response_info.value.status == 400

    field = page.get_by_label("Email address")
    alert = page.get_by_role("alert")
    expect(alert).to_have_count(1)
    expect(alert).to_contain_text("Enter a valid email address")
    # Next to the field: the element right after the input, and tied to it for screen readers.
    expect(page.locator("input#email + [role=alert]")).to_have_id("email-error")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_have_attribute("aria-describedby", "email-error")
    expect(field).to_have_value("not-an-address")  # what was typed is kept for correcting
    expect(page.get_by_role("heading", level=1)).not_to_have_text("Check your inbox")

    for model in (Subscriber, Delivery, Event):
        assert count(model) == 0, f"{model.__name__} rows written for an invalid address"


@pytest.mark.slow
def test_whole_journey_confirm_read_unsubscribe(
    start_site: Callable[..., Site],
    new_page: Callable[..., Page],
    run_worker: Callable[..., WorkerProcess],
    smtp_sink: SmtpSink,
) -> None:
    site = start_site()
    run_worker(site.env)
    email = "dora@example.org"
    page = new_page(timezone_id="Europe/Berlin")
    sign_up(page, site, email, "Dora")

    def to_dora(messages: list[EmailMessage]) -> list[EmailMessage]:
        return [m for m in messages if email in str(m["To"])]

    mail = smtp_sink.wait_for(lambda ms: any(is_confirmation(m) for m in to_dora(ms)))
    confirmation = next(m for m in to_dora(mail) if is_confirmation(m))
    # Opening the link (as a mail scanner would) only shows a button; the click confirms.
    page.goto(confirm_url_in(text_of(confirmation), site))
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your subscription")
    expect(page.get_by_text(email)).to_be_visible()
    assert subscriber(email).status is SubscriberStatus.PENDING
    page.get_by_role("button", name="Confirm my subscription").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You're in")
    assert subscriber(email).status is SubscriberStatus.ACTIVE

    mail = smtp_sink.wait_for(lambda ms: any(part_of(m) == 1 for m in to_dora(ms)))
    part1 = next(m for m in to_dora(mail) if part_of(m) == 1)
    assert str(part1["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"

    # Opening the link (as a link scanner would) changes nothing; the button does.
    page.goto(unsubscribe_url_of(part1, site))
    expect(page.get_by_role("heading", level=1)).to_have_text("Unsubscribe")
    expect(page.get_by_text(email)).to_be_visible()
    button = page.get_by_role("button", name="Unsubscribe")
    expect(button).to_be_visible()
    assert subscriber(email).status is SubscriberStatus.ACTIVE

    button.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You're unsubscribed")
    received_at_unsubscribe = len(smtp_sink.to(email))
    left = subscriber(email)
    assert left.status is SubscriberStatus.UNSUBSCRIBED
    assert left.unsubscribed_at is not None

    # Wait until every remaining part would have been due, and a few dispatch ticks more.
    with db.session() as session:
        last_offset = session.scalar(select(func.max(Step.day_offset))) or 0
        total = session.scalar(select(func.count(Step.id))) or 0
    assert left.confirmed_at is not None
    deadline = left.confirmed_at + timedelta(seconds=last_offset * DAY + 6 * TICK)
    while datetime.now(UTC) < deadline and len(smtp_sink.to(email)) == received_at_unsubscribe:
        time.sleep(0.2)

    mail_to_dora = smtp_sink.to(email)
    parts = [part_of(m) for m in mail_to_dora if part_of(m) is not None]
    assert len(mail_to_dora) == received_at_unsubscribe, (
        f"mail arrived after the unsubscribe: {[m['Subject'] for m in mail_to_dora]}"
    )
    assert parts[0] == 1 and len(parts) < total, f"the series was not cut short: parts {parts}"
    with db.session() as session:
        open_rows = session.scalar(
            select(func.count(Delivery.id)).where(
                Delivery.subscriber_id == left.id,
                Delivery.state.in_(
                    [DeliveryState.SCHEDULED, DeliveryState.CLAIMED, DeliveryState.RETRY]
                ),
            )
        )
    assert open_rows == 0


@pytest.mark.slow
def test_dev_mailbox_shows_the_confirmation_mail(
    tmp_path: Path,
    start_site: Callable[..., Site],
    new_page: Callable[..., Page],
    run_worker: Callable[..., WorkerProcess],
) -> None:
    folder = tmp_path / "maildir"
    catcher = mailcatcher.start(folder, port=free_port())
    try:
        site = start_site(DEV_MAIL_DIR=str(folder), SMTP_PORT=str(catcher.port))
        run_worker(site.env)
        email = "erin@example.org"
        page = new_page()
        sign_up(page, site, email, "Erin")

        deadline = time.monotonic() + 60
        while not mailbox.Maildir(folder, create=False).keys():
            if time.monotonic() > deadline:
                pytest.fail("the confirmation mail did not reach the Maildir in 60s")
            time.sleep(0.2)

        page.goto(f"{site.url}/_dev/mail/")
        expect(page.get_by_role("heading", level=1)).to_have_text("Mail catcher")
        row = page.get_by_role("row").filter(has_text=email)
        expect(row).to_have_count(1)
        link = row.get_by_role("link", name=re.compile(r"^Confirm your subscription to "))
        expect(link).to_be_visible()
        link.click()

        expect(page.get_by_role("heading", level=1)).to_have_text(
            re.compile(r"^Confirm your subscription to ")
        )
        frame = page.frame_locator("iframe[title='HTML part']")
        button = frame.get_by_role("link", name="Confirm my subscription")
        expect(button).to_be_visible()
        expect(button).to_have_attribute("href", re.compile(rf"^{re.escape(site.url)}/confirm/"))
        text = page.locator("pre.mail-text")
        expect(text).to_contain_text(f"{site.url}/confirm/")

        # The link in the text part is the real one: its page confirms, with the keyboard too.
        page.goto(confirm_url_in(text.inner_text(), site))
        expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your subscription")
        assert subscriber(email).status is SubscriberStatus.PENDING
        page.keyboard.press("Tab")
        button = page.get_by_role("button", name="Confirm my subscription")
        expect(button).to_be_focused()
        # A keyboard user sees where the focus is (:focus-visible ring).
        ring = button.evaluate(
            "el => [el.matches(':focus-visible'), getComputedStyle(el).outlineStyle,"
            " parseFloat(getComputedStyle(el).outlineWidth)]"
        )
        assert ring[0] and ring[1] == "solid" and ring[2] >= 2, f"focus ring {ring}"
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", level=1)).to_have_text("You're in")
        assert subscriber(email).status is SubscriberStatus.ACTIVE
    finally:
        catcher.stop()


def test_signup_page_on_a_phone(
    start_site: Callable[..., Site], new_page: Callable[..., Page]
) -> None:
    site = start_site()
    page = new_page(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True)
    page.goto(f"{site.url}/")
    expect(page.locator("input#time_zone")).not_to_have_value("")  # scripts have run

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "signup-375.png"), full_page=True)

    # The page lays out at the device width (viewport meta) and never scrolls sideways.
    # (A phone browser zooms out to fit a too-wide page, which shows as a wider layout.)
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[1] == 375, f"laid out {widths[1]}px wide on a 375px phone (too wide content?)"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (
        f"horizontal scroll: content {widths[0]}px, viewport {widths[1]}px"
    )

    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
            .filter(el => !el.id || !document.querySelector(`label[for="${el.id}"]`)
                          || !document.querySelector(`label[for="${el.id}"]`).textContent.trim())
            .map(el => el.outerHTML)"""
    )
    assert unlabelled == [], f"inputs without a label: {unlabelled}"
    assert page.locator("input:not([type=hidden])").count() >= 2

    body_px = page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
    assert body_px >= 16, f"body font-size is {body_px}px"
    # Below 16px, phones zoom into a field on focus.
    input_px = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), button')]
            .map(el => parseFloat(getComputedStyle(el).fontSize))"""
    )
    assert min(input_px) >= 16, f"form control font sizes {input_px}"


def test_archive_and_view_in_browser_on_a_phone(
    start_site: Callable[..., Site], new_page: Callable[..., Page], smtp_sink: SmtpSink
) -> None:
    """From the mail's archive link to a part, on a 375 px phone: readable, no sideways scroll."""
    site = start_site()
    send_part_one(site.app, "reader@example.org")
    html = html_of(smtp_sink.messages[-1])
    archive = re.search(r'href="([^"]+)"[^>]*>Every part you have received<', html)
    assert archive is not None and archive.group(1).startswith(f"{site.url}/read/")

    page = new_page(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True)
    page.goto(archive.group(1))
    expect(page.get_by_role("heading", level=1)).to_have_text("Your parts so far")
    assert no_sideways_scroll(page)
    page.get_by_role("link", name=re.compile(r"Part 1 of 4")).click()
    expect(page.get_by_text("Hi Ann,")).to_be_visible()
    assert page.url.startswith(archive.group(1) + "/")
    assert no_sideways_scroll(page)
    assert page.get_by_role("link", name="View in browser").count() == 0  # this is that view
    smallest = page.evaluate(
        """() => Math.min(...[...document.querySelectorAll('p, li, a, h1, h2')]
            .filter(el => el.checkVisibility() && el.textContent.trim())
            .map(el => parseFloat(getComputedStyle(el).fontSize)))"""
    )
    assert smallest >= 14, f"text of {smallest}px on the part page"


def no_sideways_scroll(page: Page) -> bool:
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    return bool(widths[1] == 375 and widths[0] <= widths[1])


def test_pages_keep_their_content_security_policy(
    start_site: Callable[..., Site], new_page: Callable[..., Page], smtp_sink: SmtpSink
) -> None:
    """Every page works under its CSP in Chromium: no violation reported, none needed."""
    site = start_site()
    reader_id = send_part_one(site.app, "reader@example.org")
    page = new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.goto(f"{site.url}/")
    expect(page.locator("input#time_zone")).not_to_have_value("")  # signup.js, from 'self', ran
    # The browser enforces it: a script written into the page does not run, and says so.
    ran = page.evaluate(
        """() => { const s = document.createElement('script');
                   s.textContent = 'window.injected = 1'; document.head.append(s);
                   return window.injected === 1; }"""
    )
    assert ran is False
    page.wait_for_timeout(100)
    assert any("inline script" in v for v in violations), violations
    violations.clear()

    sign_up(page, site, "csp@example.org")
    row = subscriber("csp@example.org")
    tokens = site.app.extensions["newsletter"].tokens
    page.goto(f"{site.url}/confirm/{tokens.confirm_token(row.id, row.email)}")
    page.get_by_role("button", name="Confirm my subscription").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You're in")

    composer = site.app.extensions["newsletter"].composer
    with db.session() as session:
        step_id = session.scalar(
            select(Delivery.step_id).where(
                Delivery.subscriber_id == reader_id, Delivery.kind == DeliveryKind.STEP
            )
        )
    page.goto(composer.reader_url(reader_id))
    expect(page.get_by_role("heading", level=1)).to_have_text("Your parts so far")
    page.goto(composer.reader_url(reader_id, step_id))
    expect(page.get_by_text("Hi Ann,")).to_be_visible()
    # The mail's inlined CSS applies on its page (style-src 'unsafe-inline' there only).
    assert page.evaluate("getComputedStyle(document.querySelector('.card')).maxWidth") == "600px"
    page.goto(composer.unsubscribe_url(reader_id))
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You're unsubscribed")
    page.wait_for_timeout(100)
    assert violations == []
