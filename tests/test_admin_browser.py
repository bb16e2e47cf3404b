"""The admin in a real browser (headless Chromium through Playwright): signing in with and
without a second factor, signing out, the keyboard's way in, and axe-core on every page of the
admin shell. The app runs on a real HTTP server in a thread of this process, so a test moves
the app's clock (for the next TOTP step) with `at_time`.

With UPDATE_SCREENSHOTS=1 the README's pictures of the accounts page and the audit log are
written to docs/screenshots/, at 1280 px wide.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from flask import Flask
from playwright.sync_api import Page, expect

from newsletter.admins import accounts, audit
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import Admin
from tests.helpers.admin import PASSWORD, create_admin, sign_in_page
from tests.helpers.apps import base_env, make_app
from tests.helpers.axe import assert_accessible
from tests.helpers.ports import free_port
from tests.helpers.serving import serving
from tests.helpers.smtp import SmtpSink

pytestmark = pytest.mark.browser

WIDTH = 1280
START = datetime(2026, 11, 2, 9, 0, 5, tzinfo=UTC)


@pytest.fixture
def served(tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink) -> Iterator[tuple[str, Flask]]:
    """The app (SQLite, seed imported) on 127.0.0.1 in a thread: (base URL, app)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = make_app(base_env(tmp_path, sqlite_url, smtp_sink, SITE_URL=url))
    with db.transaction() as session:
        ensure_seed(session)
    with serving(app, port):
        yield url, app
    db.dispose()


def realistic_accounts(app: Flask) -> None:
    """An owner, editors (one with a second factor, one deactivated) and some history."""
    owner = create_admin(app, "maria.keller@example.org")
    create_admin(app, "tom.berg@example.org", role="editor")
    create_admin(app, "ines.navarro@example.org", role="editor")
    create_admin(app, "former.intern@example.org", role="editor")
    with db.transaction() as session, audit.origin("203.0.113.24"):
        me = session.get(Admin, owner.id)
        assert me is not None
        intern = accounts.find(session, "former.intern@example.org")
        ines = accounts.find(session, "ines.navarro@example.org")
        assert intern is not None and ines is not None
        accounts.set_active(session, me, intern, False)
        ines.totp_secret = pyotp.random_base32()
        audit.record(
            session,
            actor=ines,
            action="sequence.publish",
            target="sequence:emotional-distance",
            before={"version": 1, "steps": 4},
            after={"version": 2, "steps": 5},
        )
        audit.record(
            session,
            actor=me,
            action="subscriber.erase",
            target="subscriber:1842",
            before={"status": "unsubscribed"},
            after={"erased": True},
        )
    with db.transaction() as session, audit.origin("198.51.100.7"):
        accounts.check_credentials(session, "maria.keller@example.org", "a guess, not it")


def test_sign_in_and_out_without_a_second_factor_every_page_accessible(
    served: tuple[str, Flask], new_page: Callable[..., Page], screenshot_dir: Path
) -> None:
    url, app = served
    realistic_accounts(app)
    page = new_page(viewport={"width": WIDTH, "height": 900})
    page.goto(f"{url}/admin/audit")
    expect(page).to_have_url(re.compile(r"/admin/sign-in\?next=/admin/audit$"))
    assert_accessible(page)
    # A wrong password: the message is on the page, and it is still accessible.
    page.get_by_label("Email address").fill("maria.keller@example.org")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("do not match an active account")
    assert_accessible(page)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{url}/admin/audit")
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit log")
    expect(page.get_by_role("link", name="Audit log")).to_have_attribute("aria-current", "page")
    assert_accessible(page)
    page.screenshot(path=str(screenshot_dir / "admin-audit.png"), full_page=True)
    page.get_by_label("Action").select_option("admin.sign_in_failed")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"action=admin.sign_in_failed"))
    expect(page.locator("tbody tr")).to_have_count(2)  # a guess above, and the wrong password
    assert_accessible(page)

    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Accounts").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Accounts")
    assert_accessible(page)
    page.get_by_label("Email address").fill("new.editor@example.org")
    page.get_by_label("Role", exact=True).select_option("editor")
    page.get_by_role("button", name="Add the account").click()
    expect(page.get_by_role("status")).to_contain_text(
        "One-time password for new.editor@example.org"
    )
    assert_accessible(page)
    page.goto(f"{url}/admin/accounts")
    page.screenshot(path=str(screenshot_dir / "admin-accounts.png"), full_page=True)

    for path in ("/admin/", "/admin/password", "/admin/second-factor"):
        page.goto(f"{url}{path}")
        assert_accessible(page)

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{url}/admin/sign-in")
    expect(page.get_by_role("status")).to_contain_text("You are signed out.")
    page.goto(f"{url}/admin/accounts")
    expect(page).to_have_url(re.compile(r"/admin/sign-in"))


def test_the_keyboard_reaches_the_content_first(
    served: tuple[str, Flask], new_page: Callable[..., Page]
) -> None:
    url, app = served
    create_admin(app, "ann@example.org")
    page = new_page(viewport={"width": WIDTH, "height": 900})
    sign_in_page(page, url, "ann@example.org")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    # Signing out works from the keyboard alone.
    sign_out = page.get_by_role("button", name="Sign out")
    sign_out.focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{url}/admin/sign-in")


def test_sign_in_with_a_second_factor(
    served: tuple[str, Flask],
    new_page: Callable[..., Page],
    at_time: Callable[[datetime], None],
) -> None:
    url, app = served
    at_time(START)
    create_admin(app, "ann@example.org", role="editor")
    page = new_page(viewport={"width": WIDTH, "height": 900})
    sign_in_page(page, url, "ann@example.org")
    page.get_by_role("link", name="Second factor").click()
    page.get_by_role("button", name="Set up a second factor").click()
    expect(page.locator("svg title")).to_have_text("QR code of your second-factor secret")
    assert_accessible(page)
    secret = page.locator(".secret").inner_text().replace(" ", "")
    totp = pyotp.TOTP(secret)
    # Each code is made for an instant set just before it is sent (the clock runs on, and the
    # server takes one step either side); steps that must differ are two minutes apart.
    at_time(START + timedelta(minutes=2))
    page.get_by_label("Code from your authenticator app").fill(
        totp.at(START + timedelta(minutes=2))
    )
    page.get_by_role("button", name="Turn the second factor on").click()
    expect(page.get_by_role("status")).to_contain_text("Your second factor is on")
    page.get_by_role("button", name="Sign out").click()

    page.get_by_label("Email address").fill("ann@example.org")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{url}/admin/sign-in/code")
    assert_accessible(page)
    # The code of the enrolment's step was used: a later step's code signs in.
    at_time(START + timedelta(minutes=4))
    page.get_by_label("Code from your authenticator app").fill(
        totp.at(START + timedelta(minutes=4))
    )
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(url) + r"/admin/(?!sign-in)"))
    page.goto(f"{url}/admin/password")
    expect(page.get_by_role("banner")).to_contain_text("ann@example.org (editor)")
