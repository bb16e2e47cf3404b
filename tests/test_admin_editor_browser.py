"""The sequence editor in a real browser (headless Chromium through Playwright).

An editor imports the seed article as a new sequence, fills the "Keep reading" links the
article lost, edits a part while its preview follows the typing, reorders parts with the
keyboard, reads the dry run and publishes it, and test-sends a part, which is read back from
the SMTP server. axe-core checks every page on the way; hostile text shows as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from newsletter import clock
from newsletter.db import db
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    Subscriber,
    SubscriberStatus,
)
from tests.helpers.admin import create_admin, sign_in_page
from tests.helpers.axe import assert_accessible
from tests.helpers.mailparse import html_of, text_of
from tests.helpers.smtp import SmtpSink
from tests.test_browser import Site, start_site  # noqa: F401 - the fixture
from tests.test_proposal import SEED

pytestmark = pytest.mark.browser

WIDE = {"width": 1280, "height": 900}


def crowd(slug: str) -> None:
    """People at every place of the three-part sequence `slug`: waiting on part 2 or 3, done."""
    now = clock.now()
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence).where(Sequence.slug == slug)).one()
        steps = list(sequence.steps)
        places = [1] * 9 + [2] * 4 + [3] * 3  # how many parts each person has had
        for n, had in enumerate(places):
            person = Subscriber(
                email=f"reader{n}@example.org", status=SubscriberStatus.ACTIVE, first_name="Ann"
            )
            done = had == len(steps)
            enrollment = Enrollment(
                subscriber=person,
                sequence=sequence,
                status=EnrollmentStatus.COMPLETED if done else EnrollmentStatus.ACTIVE,
                started_at=now - timedelta(days=had),
            )
            session.add(enrollment)
            for index, step in enumerate(steps[: had + 1]):
                sent = index < had
                session.add(
                    Delivery(
                        kind=DeliveryKind.STEP,
                        subscriber=person,
                        enrollment=enrollment,
                        step_id=step.id,
                        due_at=now - timedelta(days=had - index)
                        if sent
                        else now + timedelta(hours=20),
                        state=DeliveryState.SENT if sent else DeliveryState.SCHEDULED,
                        sent_at=now - timedelta(days=had - index) if sent else None,
                    )
                )


def part_rows(page: Page) -> list[str]:
    return page.locator("table.steps tbody th").all_inner_texts()


def test_import_edit_reorder_publish_and_test_send(
    start_site: Callable[..., Site],  # noqa: F811
    new_page: Callable[..., Page],
    smtp_sink: SmtpSink,
    screenshot_dir: Path,
) -> None:
    site = start_site(DRIP_DAY_SECONDS="86400")
    create_admin(site.app, "ed@example.org", role="editor")
    page = new_page(viewport=WIDE)
    sign_in_page(page, site.url, "ed@example.org")
    shots = screenshot_dir

    # The list, then the import: upload, a proposal, three parts, save.
    page.goto(f"{site.url}/admin/sequences")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sequences")
    assert_accessible(page)
    page.get_by_role("link", name="Import an article").click()
    assert_accessible(page)
    page.get_by_label("Upload an article (.txt or .md)").set_input_files(str(SEED))
    page.get_by_role("button", name="Preview the parts").click()
    expect(page.get_by_role("table")).to_contain_text("min")
    assert_accessible(page)
    page.get_by_label("Number of parts (empty: sized by reading time)").fill("3")
    page.get_by_label("Title of the series").fill("Closeness, again")
    page.get_by_role("button", name="Show the parts again").click()
    expect(page.locator("table tbody tr")).to_have_count(3)
    page.get_by_label("Slug (the name in links)").fill("closeness")
    page.get_by_role("button", name="Save as a new sequence").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Closeness, again")
    expect(page.locator(".flashes")).to_contain_text("have no URL yet")
    assert len(part_rows(page)) == 3
    assert_accessible(page)
    crowd("closeness")
    sequence_url = page.url

    # The last part: fill the two links the article lost.
    page.locator("table.steps tbody th a").nth(2).click()
    expect(page.locator(".warnings")).to_contain_text("has no URL")
    urls = page.get_by_label("URL (https://)")
    for n in range(urls.count()):
        urls.nth(n).fill(f"https://example.org/further/{n + 1}")
    page.get_by_role("button", name="Save in the draft").click()
    expect(page.locator(".flashes")).to_contain_text("Saved in the draft")
    expect(page.locator(".warnings")).to_have_count(0)

    # Part 1: type, and the preview follows (no save yet); hostile text stays text.
    page.goto(sequence_url)
    page.locator("table.steps tbody th a").first.click()
    body = page.get_by_label("Body (Markdown)")
    body.press("Control+End")
    body.type("\n\nA line typed **live** <script>alert(1)</script>", delay=5)
    desktop = page.frame_locator('iframe[name="preview-desktop"]')
    phone = page.frame_locator('iframe[name="preview-phone"]')
    expect(desktop.locator("strong", has_text="live")).to_be_visible()
    expect(phone.locator("body")).to_contain_text("<script>alert(1)</script>")
    assert page.locator("iframe[name=preview-desktop]").get_attribute("sandbox") == ""
    page.get_by_label("Subject").fill("Why distance happens, and what to do")
    page.get_by_role("button", name="Save in the draft").click()
    expect(page.locator(".flashes")).to_contain_text("Saved in the draft")
    expect(desktop.locator("strong", has_text="live")).to_be_visible()  # the saved draft
    assert_accessible(page)
    # Tall enough for both frames: Chromium leaves frames outside the viewport unpainted in a
    # full-page capture.
    page.set_viewport_size({"width": 1280, "height": 1400})
    expect(desktop.locator("strong", has_text="live")).to_be_visible()
    page.screenshot(path=str(shots / "admin-editor.png"))
    page.set_viewport_size(WIDE)

    # A bad edit: the error beside its field, nothing saved.
    page.get_by_label("Day (0 is the day they confirm)").fill("-3")
    page.get_by_role("button", name="Save in the draft").click()
    expect(page.locator("#day_offset-error")).to_contain_text("A day from 0")
    assert_accessible(page)

    # Reorder with the keyboard: part 1 moves down.
    page.goto(sequence_url)
    first = part_rows(page)[0]
    down = page.get_by_role("button", name="Move part 1 down")
    down.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".flashes")).to_contain_text("Part 1 is now part 2")
    assert part_rows(page)[1] == first
    expect(page.locator(".badge.draft")).to_contain_text("Draft version 2")
    assert_accessible(page)

    # The dry run, then publish.
    page.get_by_role("link", name="Review and publish").click()
    dry_run = page.locator(".dry-run")
    expect(dry_run).to_contain_text("13 people are in progress")
    expect(dry_run).to_contain_text("obody gets two parts in one day")
    expect(dry_run).to_contain_text("obody gets a part they already had")
    assert_accessible(page)
    page.screenshot(path=str(shots / "admin-publish.png"), full_page=True)
    page.get_by_role("button", name="Publish version 2").click()
    expect(page.locator(".flashes")).to_contain_text("Version 2 is published")
    expect(page.locator(".badge.draft")).to_have_count(0)
    assert part_rows(page)[0] != first and part_rows(page)[1] == first

    # A test send of the edited part, read back from the SMTP server.
    page.get_by_role("link", name="Send a test").click()
    page.get_by_label("Part").select_option(label=f"Part 2: {first}")
    page.get_by_label("Send to").fill("me@example.org")
    page.get_by_label("Greet them as (optional)").fill("محمد")
    assert_accessible(page)
    page.get_by_role("button", name="Send the test").click()
    expect(page.locator(".flashes")).to_contain_text("was sent to me@example.org")
    (mail,) = smtp_sink.to("me@example.org")
    assert mail["Subject"] == "[Test] Why distance happens, and what to do"
    assert "A line typed **live** <script>alert(1)</script>" in text_of(mail)
    assert "<strong>live</strong>" in html_of(mail) and "&lt;script&gt;" in html_of(mail)
    assert re.search(r"Part 2 of 3", text_of(mail))
