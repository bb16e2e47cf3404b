"""Turning tracking on in headless Chromium, from the keyboard alone: the settings page's
checkbox and its hint, the saved setting, and the funnel's opens and clicks columns; both
pages pass axe-core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy import select

from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import Sequence
from tests.helpers.admin import create_admin, sign_in_page
from tests.helpers.apps import base_env, make_app
from tests.helpers.axe import assert_accessible
from tests.helpers.ports import free_port
from tests.helpers.serving import serving
from tests.helpers.smtp import SmtpSink

pytestmark = pytest.mark.browser


@pytest.fixture
def site(tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink) -> Iterator[str]:
    """The app on a real HTTP server in a thread, with the seed sequence; its URL."""
    app: Flask = make_app(base_env(tmp_path, sqlite_url, smtp_sink))
    with db.transaction() as session:
        ensure_seed(session)
    create_admin(app, "editor@example.org", role="editor")
    try:
        with serving(app, free_port()) as url:
            yield url
    finally:
        db.dispose()


def tracking() -> tuple[int, bool]:
    with db.session() as session:
        sequence = session.scalars(select(Sequence)).one()
        return sequence.id, sequence.tracking


def focus(page: Page, element_id: str, limit: int = 60) -> None:
    """Press Tab until the element with this id has the focus."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("id => document.activeElement.id === id", element_id):
            return
    raise AssertionError(f"#{element_id} is not reachable with Tab")


def test_tracking_is_turned_on_from_the_keyboard_and_the_funnel_shows_it(
    site: str, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    sign_in_page(page, site, "editor@example.org")
    sequence_id, before = tracking()
    assert before is False
    page.goto(f"{site}/admin/sequences/{sequence_id}/settings")
    box = page.get_by_role("checkbox", name="Track clicks and opens")
    expect(box).not_to_be_checked()
    expect(box).to_have_accessible_description(
        "Off by default. When on, each mail's links pass through this site and it loads a "
        "one-pixel image, so the funnel can show each part's opens and clicks; the mail's "
        "footer tells the reader. It applies from the next mail sent, without publishing."
    )
    assert_accessible(page)
    focus(page, "tracking")
    page.keyboard.press("Space")
    expect(box).to_be_checked()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Save settings")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{site}/admin/sequences/{sequence_id}")
    assert tracking() == (sequence_id, True)

    page.goto(f"{site}/admin/sequences/{sequence_id}/funnel?period=all")
    expect(page.get_by_role("columnheader", name="Opened")).to_be_visible()
    expect(page.get_by_role("columnheader", name="Clicked")).to_be_visible()
    assert_accessible(page)
