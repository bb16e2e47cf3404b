"""The subscribers and imports pages in a real browser (headless Chromium through Playwright):
find a person by the start of their address, read their timeline, download the CSV export,
and run a CSV import through the pages with a real Celery worker; axe-core on every page.

With UPDATE_SCREENSHOTS=1 the README's picture of a timeline is written to
docs/screenshots/admin-timeline.png, at 1280 px wide.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy import select

from newsletter import clock
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.delivery import planning
from newsletter.models import Delivery, DeliveryKind, DeliveryState, Enrollment, Event, Subscriber
from tests.helpers.admin import create_admin, sign_in_page
from tests.helpers.apps import base_env, make_app
from tests.helpers.axe import assert_accessible
from tests.helpers.people import seed_steps, signed_up
from tests.helpers.ports import free_port
from tests.helpers.serving import serving
from tests.helpers.smtp import SmtpSink
from tests.helpers.workers import WorkerProcess

pytestmark = pytest.mark.browser

WIDTH = 1280
EDITOR = "ines.navarro@example.org"
NAMES = ["Amira", "Bjørn", "Chen", "Dalia", "Emeka", "Fatima", "Giulia", "Hiro", "Ilse", "Jonas"]


def serve(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[str, Flask]]:
    """The app on 127.0.0.1 in a thread: (base URL, app)."""
    port = int(env["SITE_URL"].rsplit(":", 1)[1])
    app = make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
    with serving(app, port):
        yield env["SITE_URL"], app
    db.dispose()


@pytest.fixture
def served(tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink) -> Iterator[tuple[str, Flask]]:
    url = f"http://127.0.0.1:{free_port()}"
    yield from serve(tmp_path, base_env(tmp_path, sqlite_url, smtp_sink, SITE_URL=url))


def a_reader_with_history() -> int:
    """Lena in Berlin: parts 1 and 2 sent, part 3 refused by her mailbox's server, part 4 due."""
    now = clock.now()
    started = now - timedelta(days=3, hours=2)
    with db.transaction() as session:
        lena = signed_up(
            session,
            "lena.hoffmann@example.org",
            started,
            first_name="Lena",
            time_zone="Europe/Berlin",
        )
        steps = seed_steps(session)
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == lena.id)
        ).one()
        rows = {
            d.step_id: d
            for d in session.scalars(select(Delivery).where(Delivery.subscriber_id == lena.id))
        }
        for d in rows.values():
            if d.kind is DeliveryKind.CONFIRM:
                d.state, d.sent_at, d.attempts = (
                    DeliveryState.SENT,
                    started + timedelta(seconds=2),
                    1,
                )
        plan = [
            (steps[0], DeliveryState.SENT, started + timedelta(minutes=5), None),
            (steps[1], DeliveryState.SENT, started + timedelta(days=1), None),
            (
                steps[2],
                DeliveryState.FAILED,
                None,
                "550 5.2.2 <lena.hoffmann@example.org>: mailbox full",
            ),
        ]
        for step, state, sent_at, error in plan:
            row = rows.get(step.id) or planning.add_delivery(
                session,
                DeliveryKind.STEP,
                lena.id,
                sent_at or now - timedelta(hours=2),
                now,
                enrollment_id=enrollment.id,
                step_id=step.id,
            )
            row.state, row.sent_at, row.last_error = state, sent_at, error
            row.attempts = 1 if state is DeliveryState.SENT else 3
            if state is DeliveryState.SENT:
                row.due_at = sent_at or row.due_at
                session.add(
                    Event(
                        subscriber_id=lena.id,
                        delivery_id=None,
                        kind="sent",
                        data={"part": str(step.position)},
                        created_at=sent_at or now,
                    )
                )
        tomorrow = (now + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
        planning.add_delivery(
            session,
            DeliveryKind.STEP,
            lena.id,
            tomorrow,
            now,
            enrollment_id=enrollment.id,
            step_id=steps[3].id,
        )
        for n, name in enumerate(NAMES * 3):
            signed_up(
                session,
                f"{name.lower().replace('ø', 'o')}.{n}@example.org",
                now - timedelta(days=n % 9, minutes=n),
                first_name=name,
                confirm=n % 4 != 0,
            )
        return lena.id


def test_find_a_subscriber_read_the_timeline_and_export(
    served: tuple[str, Flask],
    new_page: Callable[..., Page],
    tmp_path: Path,
    screenshot_dir: Path,
) -> None:
    url, app = served
    create_admin(app, EDITOR, role="editor")
    lena_id = a_reader_with_history()
    page = new_page(viewport={"width": WIDTH, "height": 900}, accept_downloads=True)
    sign_in_page(page, url, EDITOR)
    page.goto(f"{url}/admin/subscribers")
    assert_accessible(page)
    page.get_by_label("Address starts with").fill("LENA.H")
    page.get_by_role("button", name="Show").click()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    page.get_by_role("link", name="lena.hoffmann@example.org").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("lena.hoffmann@example.org")
    expect(page.locator(".sentences")).to_contain_text("Part 3 failed: 550 5.2.2")
    expect(page.locator(".sentences")).to_contain_text("Part 4 is due")
    assert page.url.endswith(f"/admin/subscribers/{lena_id}")
    assert_accessible(page)
    page.screenshot(path=str(screenshot_dir / "admin-timeline.png"), full_page=True)

    page.get_by_role("link", name="Erase…").click()
    expect(page.get_by_role("button", name="Erase for good")).to_be_visible()
    assert_accessible(page)
    page.go_back()

    page.goto(f"{url}/admin/subscribers?state=active")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export these as CSV").click()
    saved = tmp_path / "export.csv"
    download_info.value.save_as(saved)
    exported = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert "lena.hoffmann@example.org" in {r["email"] for r in exported}
    assert {r["status"] for r in exported} == {"active"}


@pytest.mark.slow
@pytest.mark.redis
def test_an_import_through_the_pages_with_a_real_worker(
    tmp_path: Path,
    sqlite_url: str,
    redis_url: str,
    smtp_sink: SmtpSink,
    run_worker: Callable[..., WorkerProcess],
    new_page: Callable[..., Page],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = base_env(
        tmp_path, sqlite_url, smtp_sink, SITE_URL=url, BROKER_URL=redis_url, REDIS_URL=redis_url
    )
    site = serve(tmp_path, env)
    _, app = next(site)
    try:
        create_admin(app, EDITOR, role="editor")
        with db.transaction() as session:
            signed_up(session, "already@example.org", clock.now())
        run_worker(env, beat=False, concurrency=1)
        source = tmp_path / "people.csv"
        source.write_text(
            "E-mail,First name,Time zone\n"
            "new.one@example.org,Noor,Asia/Kolkata\n"
            "ALREADY@example.org,Again,\n"
            "new.one@example.org,Twice,\n"
            "broken@@example.org,<script>alert(1)</script>,\n"
            'third@example.org,=HYPERLINK("https://evil.example"),Europe/Paris\n',
            encoding="utf-8",
        )
        page = new_page(viewport={"width": WIDTH, "height": 900})
        sign_in_page(page, url, EDITOR)
        page.goto(f"{url}/admin/imports")
        assert_accessible(page)
        page.get_by_label("CSV file (UTF-8, with a header row)").set_input_files(str(source))
        page.get_by_role("button", name="Upload").click()
        expect(page.get_by_role("heading", name="The first rows")).to_be_visible()
        expect(page.get_by_label("Email address")).to_have_value("0")
        expect(page.get_by_label("First name")).to_have_value("1")
        expect(page.locator("tbody")).to_contain_text("<script>alert(1)</script>")
        assert_accessible(page)
        page.get_by_label("I attest they already consented", exact=False).check()
        page.get_by_role("button", name="Start the import").click()
        expect(page.locator(".import-state")).to_contain_text("done", timeout=120_000)
        report = page.locator("table")
        expect(report).to_contain_text("repeats line 2")
        expect(report).to_contain_text("already a subscriber")
        expect(report).to_contain_text("broken@@example.org")
        assert_accessible(page)
        with db.session() as session:
            added = session.scalars(
                select(Subscriber).where(Subscriber.consent_form.like("import #%"))
            ).all()
            assert {s.email for s in added} == {"new.one@example.org", "third@example.org"}
            assert all(EDITOR in (s.consent_form or "") for s in added)
    finally:
        next(site, None)
