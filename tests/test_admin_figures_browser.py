"""The dashboard and the funnel in headless Chromium: they render a month of a small list,
pass axe-core, and work from the keyboard alone. With UPDATE_SCREENSHOTS=1 they are the
README's pictures (docs/screenshots/admin-dashboard.png, admin-funnel.png), 1280 px wide.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Page, expect

from newsletter import clock
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.delivery import heartbeat
from tests.helpers.admin import create_admin, sign_in_page
from tests.helpers.apps import base_env, make_app
from tests.helpers.axe import assert_accessible
from tests.helpers.ports import free_port
from tests.helpers.rows import realistic_list
from tests.helpers.serving import serving
from tests.helpers.smtp import SmtpSink

pytestmark = pytest.mark.browser

WIDTH = 1280
BROWSING = {"viewport": {"width": WIDTH, "height": 900}}


@pytest.fixture
def site(tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink) -> Iterator[str]:
    """The app on a real HTTP server in a thread, with a month of a small list; its URL."""
    app: Flask = make_app(base_env(tmp_path, sqlite_url, smtp_sink))
    now = clock.now()
    with db.transaction() as session:
        ensure_seed(session)
        realistic_list(session, now)
        heartbeat.beat(session, heartbeat.DISPATCH, now)
    create_admin(app, "editor@example.org", role="editor")
    try:
        with serving(app, free_port()) as url:
            yield url
    finally:
        db.dispose()


def no_script(page: Page) -> bool:
    """The page carries no script of its own (the charts are SVG drawn on the server)."""
    return bool(page.evaluate("() => document.querySelectorAll('script').length === 0"))


def tab_to(page: Page, name: str, limit: int = 80) -> None:
    """Press Tab until the focused element's id or text is `name`."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        found = page.evaluate(
            "name => { const e = document.activeElement;"
            " return e.id === name || (e.innerText || '').trim() === name; }",
            name,
        )
        if found:
            return
    raise AssertionError(f"{name!r} is not reachable with Tab")


def test_the_dashboard_renders_is_accessible_and_works_from_the_keyboard(
    site: str, new_page: Callable[..., Page], screenshot_dir: Path
) -> None:
    page = new_page(**BROWSING)
    sign_in_page(page, site, "editor@example.org")
    with db.transaction() as session:  # as a running beat keeps it
        heartbeat.beat(session, heartbeat.DISPATCH, clock.now())
    page.goto(f"{site}/admin/")
    expect(page).to_have_url(f"{site}/admin/dashboard")
    expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()
    expect(page.get_by_text("Sending is running")).to_be_visible()
    for title in ("Subscribers by state", "Signups", "Confirmations", "Mails sent"):
        expect(page.get_by_role("img", name=re.compile(f"^{title}"))).to_be_visible()
    # Every chart is drawn: bars with a height, inside the page's width.
    heights = page.eval_on_selector_all(
        "svg.chart rect.bar", "rects => rects.map(r => r.getBBox().height)"
    )
    assert len(heights) == 5 + 3 * 30 and sum(1 for h in heights if h > 0) > 60
    assert page.evaluate("() => document.documentElement.scrollWidth") <= WIDTH
    assert no_script(page)
    assert_accessible(page)
    page.screenshot(path=str(screenshot_dir / "admin-dashboard.png"), full_page=True)

    # The day-by-day numbers open from the keyboard.
    table = page.get_by_role("table", name=re.compile("per day"))
    expect(table).to_be_hidden()
    tab_to(page, "The numbers, day by day")
    page.keyboard.press("Enter")
    expect(table).to_be_visible()
    assert_accessible(page)


def test_the_funnel_renders_is_accessible_and_its_period_changes_from_the_keyboard(
    site: str, new_page: Callable[..., Page], screenshot_dir: Path
) -> None:
    page = new_page(**BROWSING)
    sign_in_page(page, site, "editor@example.org")
    page.goto(f"{site}/admin/dashboard")
    page.get_by_role("link", name=re.compile("^Emotional Distance")).click()
    expect(page).to_have_url(f"{site}/admin/sequences/1/funnel")
    expect(page.get_by_role("heading", name=re.compile("^Funnel: "))).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("^Mails sent per part"))).to_be_visible()
    rows = page.get_by_role("table").locator("tbody tr")
    expect(rows).to_have_count(4)
    assert no_script(page)
    assert_accessible(page)
    page.screenshot(path=str(screenshot_dir / "admin-funnel.png"), full_page=True)

    tab_to(page, "period")
    expect(page.get_by_label("Readers who enrolled in")).to_be_focused()
    page.keyboard.press("ArrowDown")  # from the last 30 days to the last 90
    tab_to(page, "Show")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/funnel\?period=90$"))
    expect(page.get_by_label("Readers who enrolled in")).to_have_value("90")
    assert_accessible(page)
