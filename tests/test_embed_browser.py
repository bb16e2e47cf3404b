"""The embeddable form in headless Chromium, pasted on pages of other sites.

Our app is served on 127.0.0.1 from a thread; two "other sites" are tiny HTTP servers on
127.0.0.1 with ports of their own (so origins of their own), each serving a page that carries
the snippet as copied from /embed. One is in EMBED_ORIGINS, the other is not. With
UPDATE_SCREENSHOTS=1 the README's picture of the embed page at phone width is written to
docs/screenshots/embed-phone.png.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import Subscriber
from tests.helpers.apps import base_env, make_app
from tests.helpers.axe import FAILING_IMPACTS, violations
from tests.helpers.ports import free_port
from tests.helpers.serving import serving
from tests.helpers.smtp import SmtpSink

pytestmark = pytest.mark.browser

FAILED = "The form could not be sent from this page. Try again later."


@dataclass
class Sites:
    """Our app's URL and the two other sites' pages carrying the snippet."""

    ours: str
    allowed: str
    refused: str


class ForeignSite:
    """Another site: an HTTP server on 127.0.0.1, port of its own, serving one page."""

    def __init__(self) -> None:
        self.page = b""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(site.page)))
                self.end_headers()
                self.wfile.write(site.page)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _page_with(snippet: str) -> bytes:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # The other site's own look (its style sheet, not ours): the snippet takes it on.
        "<style>body{font:17px/1.6 Georgia,serif;margin:0;background:#eef3f1;color:#233}"
        "main{max-width:36rem;margin:0 auto;padding:1.5rem}h1{color:#24594a}"
        "form{background:#fff;border-radius:8px;padding:1rem;display:grid;gap:.4rem}"
        "input{font:inherit;padding:.5rem;border:1px solid #789}"
        "button{font:inherit;padding:.6rem;background:#24594a;color:#fff;border:0}</style>"
        "<title>A blog</title></head><body><main><h1>A blog about feelings</h1>"
        "<p>This week: why distance grows, and what brings people back.</p>"
        f"<p>Get the course by mail:</p>{snippet}</main></body></html>"
    ).encode()


@pytest.fixture
def sites(tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink) -> Iterator[Sites]:
    """Our app, and the two other sites carrying the snippet as copied from our /embed page."""
    allowed, refused = ForeignSite(), ForeignSite()
    port = free_port()
    ours = f"http://127.0.0.1:{port}"
    env = base_env(tmp_path, sqlite_url, smtp_sink, SITE_URL=ours, EMBED_ORIGINS=allowed.origin)
    app = make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
    embed_page = app.test_client().get("/embed").get_data(as_text=True)
    match = re.search(r'<pre class="snippet"[^>]*><code>(.*?)</code></pre>', embed_page, re.S)
    assert match, "no snippet on /embed"
    allowed.page = refused.page = _page_with(html.unescape(match.group(1)))
    try:
        with serving(app, port):
            yield Sites(ours=ours, allowed=f"{allowed.origin}/", refused=f"{refused.origin}/")
    finally:
        allowed.stop()
        refused.stop()
        db.dispose()


def signed_up() -> list[tuple[str, str | None]]:
    with db.session() as session:
        rows = session.execute(select(Subscriber.email, Subscriber.consent_form))
        return [(email, form) for email, form in rows]


def fill_by_keyboard(page: Page, email: str) -> None:
    """Tab to the email field (the first one; the honeypot takes no focus), type, press Enter."""
    page.keyboard.press("Tab")
    expect(page.locator("#nl-email")).to_be_focused()
    page.keyboard.type(email)
    page.keyboard.press("Enter")


# -- without JavaScript --------------------------------------------------------------------------


def test_without_script_an_allowed_site_lands_on_check_your_inbox(
    sites: Sites, new_page: Callable[..., Page]
) -> None:
    page = new_page(java_script_enabled=False)
    page.goto(sites.allowed)
    fill_by_keyboard(page, "reader@example.org")
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    assert page.url == f"{sites.ours}/thanks"
    assert signed_up() == [("reader@example.org", "embed")]
    # "Check your inbox" with its "send it again" form passes axe-core too (axe needs script).
    checked = new_page()
    checked.goto(f"{sites.ours}/thanks")
    found = [v for v in violations(checked) if v["impact"] in FAILING_IMPACTS]
    assert found == [], [(v["id"], v["help"]) for v in found]


def test_without_script_a_refused_site_changes_nothing(
    sites: Sites, new_page: Callable[..., Page]
) -> None:
    page = new_page(java_script_enabled=False)
    page.goto(sites.refused)
    fill_by_keyboard(page, "victim@example.org")
    expect(page.get_by_role("heading", level=1)).to_have_text("This form is not ours to take")
    assert signed_up() == []


# -- with the script -----------------------------------------------------------------------------


def test_with_script_an_allowed_site_shows_the_answer_in_place(
    sites: Sites, new_page: Callable[..., Page], screenshot_dir: Path
) -> None:
    page = new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page.goto(sites.allowed)
    page.get_by_label("First name (optional)").fill("Pat")
    page.locator("#nl-email").fill("reader@example.org")
    page.get_by_role("button", name="Send me part one").click()
    expect(page.locator("form")).to_have_attribute("data-newsletter-state", "sent")
    expect(page.get_by_role("status")).to_contain_text("Check your inbox")
    assert page.url == sites.allowed  # the reader never left the other site
    page.screenshot(path=str(screenshot_dir / "embed-foreign-phone.png"), full_page=True)
    assert signed_up() == [("reader@example.org", "embed")]
    # An address the browser lets through and we refuse: the reason, in place.
    page.locator("#nl-email").fill("reader@nowhere.test")
    page.get_by_role("button", name="Send me part one").click()
    expect(page.locator("form")).to_have_attribute("data-newsletter-state", "refused")
    expect(page.get_by_role("status")).to_contain_text("Enter a valid email address")
    assert len(signed_up()) == 1


def test_with_script_a_refused_site_gets_no_cors_permission(
    sites: Sites, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    blocked: list[str] = []
    page.on("console", lambda msg: blocked.append(msg.text) if "CORS" in msg.text else None)
    page.goto(sites.refused)
    page.locator("#nl-email").fill("victim@example.org")
    page.get_by_role("button", name="Send me part one").click()
    expect(page.locator("form")).to_have_attribute("data-newsletter-state", "failed")
    expect(page.get_by_role("status")).to_have_text(FAILED)
    assert any("Access-Control-Allow-Origin" in text for text in blocked), blocked
    assert signed_up() == []


# -- our embed page ------------------------------------------------------------------------------


def test_embed_page_passes_axe_at_phone_width(
    sites: Sites, new_page: Callable[..., Page], screenshot_dir: Path
) -> None:
    page = new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page.goto(f"{sites.ours}/embed")
    expect(page.get_by_role("heading", level=1)).to_have_text("Put the signup form on your site")
    found = [v for v in violations(page) if v["impact"] in FAILING_IMPACTS]
    assert found == [], [(v["id"], v["help"]) for v in found]
    # The page's own preview works too (same origin): the answer appears under its button.
    page.locator("#nl-email").fill("preview@example.org")
    page.get_by_role("button", name="Send me part one").click()
    expect(page.get_by_role("status")).to_contain_text("Check your inbox")
    page.screenshot(path=str(screenshot_dir / "embed-phone.png"), full_page=True)
    assert signed_up() == [("preview@example.org", "embed")]
