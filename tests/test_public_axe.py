"""Every public page in headless Chromium, in each of its states: axe-core finds no serious or
critical violation, the page has one `main` and one `h1`, and at 375 px it never scrolls
sideways."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from newsletter import mailcatcher
from newsletter.db import db
from newsletter.models import Subscriber
from tests.helpers.apps import runtime_of
from tests.helpers.axe import FAILING_IMPACTS, violations
from tests.helpers.ports import free_port
from tests.helpers.sending import send_part_one
from tests.helpers.smtp import SmtpSink
from tests.test_browser import Site, start_site  # noqa: F401 - the fixture, shared

pytestmark = pytest.mark.browser

PHONE = 375


def check(page: Page, what: str) -> None:
    """The page as it is now passes axe-core and has the landmarks every page has."""
    serious = [v for v in violations(page) if v["impact"] in FAILING_IMPACTS]
    assert serious == [], f"{what}: " + "; ".join(
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}" for v in serious
    )
    assert page.locator("main").count() == 1, f"{what}: main landmarks"
    assert page.locator("h1").count() == 1, f"{what}: h1 headings"
    # A phone browser widens its layout to fit too-wide content, so the width must stay 375.
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[1] == PHONE and widths[0] <= widths[1], f"{what}: sideways scroll {widths}"


def test_every_public_page_passes_axe_on_a_phone(
    tmp_path: Path,
    start_site: Callable[..., Site],  # noqa: F811 - the fixture imported above
    new_page: Callable[..., Page],
    smtp_sink: SmtpSink,
    screenshot_dir: Path,
) -> None:
    folder = tmp_path / "maildir"
    catcher = mailcatcher.start(folder, port=free_port())
    try:
        site = start_site(DEV_MAIL_DIR=str(folder), SMTP_PORT=str(catcher.port))
        tokens = runtime_of(site.app).tokens
        # First, while nothing else is due: the send path takes every due part it finds.
        reader = send_part_one(site.app, "quinn@example.org")
        page = new_page(viewport={"width": PHONE, "height": 740}, is_mobile=True, has_touch=True)

        page.goto(f"{site.url}/")
        check(page, "signup")
        page.screenshot(path=str(screenshot_dir / "signup-phone.png"), full_page=True)
        page.get_by_label("Email address").fill("not-an-address")
        page.get_by_role("button", name="Send me part one").click()
        expect(page).to_have_title(re.compile(r"^Error: check the form"))
        expect(page.get_by_label("Email address")).to_be_focused()
        check(page, "signup, refused")

        page.get_by_label("Email address").fill("pia@example.org")
        page.get_by_role("button", name="Send me part one").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
        check(page, "check your inbox")

        with db.session() as session:
            pia = session.scalars(
                select(Subscriber).where(Subscriber.email == "pia@example.org")
            ).one()
        page.goto(f"{site.url}/confirm/{tokens.confirm_token(pia.id, pia.email)}")
        check(page, "confirm")
        page.get_by_role("button").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("You're in")
        check(page, "confirmed")
        page.goto(f"{site.url}/confirm/forged")
        check(page, "a forged confirm link")

        page.goto(f"{site.url}/read/{tokens.reader_token(reader)}")
        check(page, "archive")
        page.get_by_role("link", name=re.compile(r"^Part 1 of 4")).click()
        check(page, "a part in the browser")

        page.goto(f"{site.url}/unsubscribe/{tokens.unsubscribe_token(reader)}")
        check(page, "unsubscribe")
        page.get_by_role("button").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("You're unsubscribed")
        check(page, "unsubscribed, with the reason form")
        page.get_by_role("button", name="Send my answer").click()
        expect(page).to_have_title(re.compile(r"^Error: check the form"))
        check(page, "the reason form, refused")
        page.get_by_label("Too many mails").check()
        page.get_by_role("button", name="Send my answer").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Thank you")
        check(page, "the reason, kept")

        page.goto(f"{site.url}/no-such-page")
        expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
        check(page, "404")

        page.goto(f"{site.url}/_dev/mail/")
        check(page, "the dev mail catcher")
        # A part's page in the catcher: long links and headers wrap instead of widening it.
        page.get_by_role("link", name=re.compile(r"^Emotional Distance")).first.click()
        page.locator("summary", has_text="Headers").click()
        expect(page.get_by_text("List-Unsubscribe", exact=True)).to_be_visible()
        check(page, "a mail in the dev mail catcher")
    finally:
        catcher.stop()
