"""The embeddable form through the test client: the snippet page, the plain POST (303 to "check
your inbox"), the JSON answer for the script, CORS for EMBED_ORIGINS only, a refused Origin
that changes nothing, the defences on the embed endpoint, the headers (HSTS on https).
SQLite and PostgreSQL.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from markupsafe import escape
from sqlalchemy import func, select

from newsletter.config import ConfigError, load_settings
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import Delivery, Subscriber
from tests.helpers.apps import base_env, make_app
from tests.helpers.env import ROOT
from tests.helpers.smtp import SmtpSink
from tests.helpers.webclient import csrf

BLOG = "https://blog.example.org"
EVIL = "https://evil.example.net"
ENDPOINT = "/embed/signup"
PAGE_CSP_START = "default-src 'self'; script-src 'self'"


@pytest.fixture
def embed_app(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> Iterator[Flask]:
    env = base_env(tmp_path, database_url, smtp_sink, EMBED_ORIGINS=f"{BLOG}, http://127.0.0.1:8")
    application = make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
    yield application
    db.dispose()


def subscribers() -> list[tuple[str, str | None]]:
    with db.session() as session:
        rows = session.execute(
            select(Subscriber.email, Subscriber.consent_form).order_by(Subscriber.id)
        )
        return [(email, form) for email, form in rows]


def deliveries() -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count(Delivery.id))) or 0)


def test_the_embed_page_shows_the_snippet_with_our_address(embed_app: Flask) -> None:
    response = embed_app.test_client().get("/embed")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    snippet = (
        '<form method="post" action="https://news.example.test/embed/signup" '
        'class="newsletter-signup" data-newsletter-embed>'
    )
    assert str(escape(snippet)) in page  # shown as text, to copy
    assert snippet in page  # and live, as a preview
    assert '<script src="https://news.example.test/static/embed.js" defer></script>' in page
    assert f"{BLOG}, http://127.0.0.1:8" in page
    assert page.count("<h1>") == 1 and "<main" in page
    headers = response.headers
    assert headers["Content-Security-Policy"].startswith(PAGE_CSP_START)
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Strict-Transport-Security"] == "max-age=31536000"


def test_a_plain_post_from_an_allowed_site_lands_on_check_your_inbox(embed_app: Flask) -> None:
    client = embed_app.test_client()
    response = client.post(ENDPOINT, data={"email": "reader@example.org"}, headers={"Origin": BLOG})
    assert (response.status_code, response.headers["Location"]) == (303, "/thanks")
    assert response.headers["Access-Control-Allow-Origin"] == BLOG
    assert "Origin" in response.headers["Vary"]
    assert subscribers() == [("reader@example.org", "embed")]
    assert deliveries() == 1
    # ?form= names the form in the consent record, as on the signup page.
    client.post(
        f"{ENDPOINT}?form=blog-sidebar", data={"email": "b@example.org"}, headers={"Origin": BLOG}
    )
    assert ("b@example.org", "blog-sidebar") in subscribers()


def test_the_script_gets_json(embed_app: Flask) -> None:
    client = embed_app.test_client()
    headers = {"Origin": BLOG, "Accept": "application/json"}
    good = client.post(ENDPOINT, data={"email": "reader@example.org"}, headers=headers)
    assert good.status_code == 200
    assert good.get_json()["ok"] is True
    assert "Check your inbox" in good.get_json()["message"]
    assert good.headers["Access-Control-Allow-Origin"] == BLOG
    bad = client.post(ENDPOINT, data={"email": "not an address"}, headers=headers)
    assert bad.status_code == 400
    answer = bad.get_json()
    assert answer["ok"] is False and answer["errors"]["email"] and answer["message"]
    assert bad.headers["Access-Control-Allow-Origin"] == BLOG
    assert subscribers() == [("reader@example.org", "embed")]


def test_a_bad_address_without_the_script_gets_our_form_with_the_error(embed_app: Flask) -> None:
    client = embed_app.test_client()
    response = client.post(
        ENDPOINT, data={"email": "<b>not</b> an address"}, headers={"Origin": BLOG}
    )
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'id="email-error"' in page and 'action="/"' in page
    assert 'value="&lt;b&gt;not&lt;/b&gt; an address"' in page  # text, escaped
    assert 'name="csrf_token"' in page  # our own form, sent to our own page from here on
    assert "A free course by email in 4 parts" in page  # the signup page itself, in full
    assert subscribers() == []


def test_a_post_from_a_site_not_allowed_changes_nothing(embed_app: Flask) -> None:
    client = embed_app.test_client()
    for origin in (EVIL, "null", "https://blog.example.org.evil.example.net"):
        for accept in ("text/html", "application/json"):
            response = client.post(
                ENDPOINT,
                data={"email": "victim@example.org"},
                headers={"Origin": origin, "Accept": accept},
            )
            assert response.status_code == 403
            assert "Access-Control-Allow-Origin" not in response.headers
    assert subscribers() == [] and deliveries() == 0
    # No Origin at all is not a browser's cross-site POST (a browser always sends one).
    response = client.post(ENDPOINT, data={"email": "plain@example.org"})
    assert response.status_code == 303
    # Our own pages (the preview on /embed) may send it.
    response = client.post(
        ENDPOINT, data={"email": "own@example.org"}, headers={"Origin": "https://news.example.test"}
    )
    assert response.status_code == 303
    assert "Access-Control-Allow-Origin" not in response.headers


def test_the_preflight_answers_allowed_sites_only(embed_app: Flask) -> None:
    client = embed_app.test_client()
    asked = {"Access-Control-Request-Method": "POST"}
    allowed = client.options(ENDPOINT, headers={"Origin": BLOG, **asked})
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == BLOG
    assert allowed.headers["Access-Control-Allow-Methods"] == "POST"
    refused = client.options(ENDPOINT, headers={"Origin": EVIL, **asked})
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "Access-Control-Allow-Methods" not in refused.headers


def test_the_embed_endpoint_has_the_defences(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    env = base_env(
        tmp_path, database_url, smtp_sink, EMBED_ORIGINS=BLOG, SIGNUP_RATE_LIMIT="2 per minute"
    )
    app = make_app(env)
    try:
        with db.transaction() as session:
            ensure_seed(session)
        client = app.test_client()
        headers = {"Origin": BLOG}
        person = client.post(ENDPOINT, data={"email": "p@example.org"}, headers=headers)
        script = client.post(
            ENDPOINT, data={"email": "s@example.org", "homepage": "x"}, headers=headers
        )
        assert (script.status_code, script.headers["Location"], script.get_data()) == (
            person.status_code,
            person.headers["Location"],
            person.get_data(),
        )
        assert subscribers() == [("p@example.org", "embed")]
        # The honeypot's answer counted too: the third request from this client is over.
        over = client.post(ENDPOINT, data={"email": "q@example.org"}, headers=headers)
        assert over.status_code == 429
        assert "<h1>Too many requests</h1>" in over.get_data(as_text=True)
        over_json = client.post(
            ENDPOINT,
            data={"email": "q@example.org"},
            headers={**headers, "Accept": "application/json"},
        )
        assert over_json.status_code == 429 and over_json.get_json()["ok"] is False
        # The signup page shares the budget.
        page_form = {"csrf_token": csrf(client), "email": "q@example.org"}
        assert client.post("/", data=page_form).status_code == 429
    finally:
        db.dispose()


def test_no_hsts_on_a_plain_http_loopback_site(
    tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink
) -> None:
    env = base_env(tmp_path, sqlite_url, smtp_sink, SITE_URL="http://127.0.0.1:5000")
    app = make_app(env)
    try:
        assert "Strict-Transport-Security" not in app.test_client().get("/embed").headers
    finally:
        db.dispose()


def test_embed_origins_setting(tmp_path: Path) -> None:
    env = {"INSTANCE_DIR": str(tmp_path), "SECRET_KEY": "x" * 32}
    assert load_settings(env).embed_origins == ()
    value = "https://Blog.Example.org/, http://127.0.0.1:8080"
    assert load_settings(env | {"EMBED_ORIGINS": value}).embed_origins == (
        "https://blog.example.org",
        "http://127.0.0.1:8080",
    )
    for bad in ("blog.example.org", "ftp://x.example", "https://x.example/page", "*"):
        with pytest.raises(ConfigError, match="EMBED_ORIGINS"):
            load_settings(env | {"EMBED_ORIGINS": bad})


def test_check_deliverability_setting(tmp_path: Path) -> None:
    env = {"INSTANCE_DIR": str(tmp_path), "SECRET_KEY": "x" * 32}
    assert load_settings(env).check_deliverability is False
    assert load_settings(env | {"CHECK_DELIVERABILITY": "1"}).check_deliverability is True
    with pytest.raises(ConfigError, match="CHECK_DELIVERABILITY"):
        load_settings(env | {"CHECK_DELIVERABILITY": "maybe"})


def test_the_readme_shows_the_snippet_the_embed_page_gives(embed_app: Flask) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"```html\n(<form .*?</script>)\n```", readme, re.S)
    assert shown, "no snippet in the README"
    page = embed_app.test_client().get("/embed").get_data(as_text=True)
    given = re.search(r'<pre class="snippet"[^>]*><code>(.*?)</code></pre>', page, re.S)
    assert given
    ours = html.unescape(given.group(1)).strip()
    assert shown.group(1).replace("news.example.com", "news.example.test") == ours
