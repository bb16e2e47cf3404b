"""Web hardening: headers and cookie flags on every page, CSRF tokens that expire, no query
parameter reaching url_for, method tricks answered 405/400 (never 500), the TRUSTED_PROXIES
warning and the daily cap of confirmation mails per address. SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from newsletter import clock
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import Delivery, DeliveryKind, Event, Subscriber, SubscriberStatus
from tests.helpers.apps import base_env, make_app, runtime_of
from tests.helpers.sending import send_part_one
from tests.helpers.smtp import SmtpSink
from tests.helpers.webclient import CSRF_FIELD, csrf, post_signup

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
MAIL_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' https:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def count(model: type) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def confirmations() -> int:
    with db.session() as session:
        return int(
            session.scalar(
                select(func.count(Delivery.id)).where(Delivery.kind == DeliveryKind.CONFIRM)
            )
            or 0
        )


def assert_hardened(response: TestResponse, csp: str = PAGE_CSP) -> None:
    """The security headers every non-static response carries."""
    where = f"{response.request.method} {response.request.path} ({response.status_code})"
    headers = response.headers
    assert headers.get("Content-Security-Policy") == csp, where
    assert headers.get("X-Frame-Options") == "DENY", where
    assert headers.get("X-Content-Type-Options") == "nosniff", where
    assert headers.get("Referrer-Policy") == "no-referrer", where
    assert "no-store" in headers.get("Cache-Control", ""), where
    if csp == PAGE_CSP and response.mimetype == "text/html":
        body = response.get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", body), f"inline script on {where}"
        assert not re.search(r"<[^>]+\sstyle=", body), f"inline style attribute on {where}"
        assert "<style" not in body, f"style element on {where}"


def cookie_flags(response: TestResponse) -> list[set[str]]:
    """The attributes of each Set-Cookie of a response, lower-cased ("samesite=lax", ...)."""
    return [
        {attribute.strip().lower() for attribute in header.split(";")[1:]}
        for header in response.headers.getlist("Set-Cookie")
    ]


@pytest.fixture
def pages(app: Flask, smtp_sink: SmtpSink) -> dict[str, str]:
    """A path of each kind of page: a pending person's confirm link, a reader's part."""
    client = app.test_client()
    post_signup(client, "pending@example.org")
    tokens = runtime_of(app).tokens
    composer = runtime_of(app).composer
    site = runtime_of(app).settings.site_url
    with db.session() as session:
        pending = session.scalars(select(Subscriber)).one()
    reader_id = send_part_one(app, "reader@example.org")
    with db.session() as session:
        step_id = session.scalar(
            select(Delivery.step_id).where(
                Delivery.subscriber_id == reader_id, Delivery.kind == DeliveryKind.STEP
            )
        )
    assert step_id is not None
    return {
        "signup": "/",
        "thanks": "/thanks",
        "confirm": f"/confirm/{tokens.confirm_token(pending.id, pending.email)}",
        "unsubscribe": f"/unsubscribe/{tokens.unsubscribe_token(reader_id)}",
        "archive": composer.reader_url(reader_id).removeprefix(site),
        "part": composer.reader_url(reader_id, step_id).removeprefix(site),
        "preferences": composer.preferences_url(reader_id).removeprefix(site),
        "not found": "/no/such/page",
    }


@pytest.mark.any_database
def test_every_page_has_the_security_headers_and_cookie_flags(
    app: Flask, pages: dict[str, str]
) -> None:
    for name, path in pages.items():
        response = app.test_client().get(path)  # a fresh client: its cookies are set here
        expected = 404 if name == "not found" else 200
        assert response.status_code == expected, name
        assert_hardened(response, MAIL_CSP if name == "part" else PAGE_CSP)
        flags = cookie_flags(response)
        if name in ("signup", "confirm", "unsubscribe", "preferences"):  # forms set the session
            assert flags, f"{name} set no session cookie"
        for cookie in flags:
            assert {"samesite=lax", "httponly", "secure"} <= cookie, (name, cookie)
    # Answers to POSTs and error pages carry them too.
    client = app.test_client()
    token = csrf(client)
    assert_hardened(client.post("/", data={"csrf_token": token, "email": "x@example.org"}))
    assert_hardened(client.post("/", data={"csrf_token": token, "email": "not-an-address"}))
    assert_hardened(client.post("/", data={"email": "no-token@example.org"}))
    assert_hardened(client.delete("/"))
    # Static files are the one thing a browser may cache; they still get the other headers.
    static = client.get("/static/style.css")
    assert static.status_code == 200
    assert "no-store" not in static.headers.get("Cache-Control", "")
    assert static.headers["X-Content-Type-Options"] == "nosniff"
    assert static.headers["Content-Security-Policy"] == PAGE_CSP
    static.close()


def test_session_cookie_is_not_secure_on_a_plain_http_loopback_site(
    tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink
) -> None:
    local = make_app(base_env(tmp_path, sqlite_url, smtp_sink, SITE_URL="http://127.0.0.1:5000"))
    with db.transaction() as session:
        ensure_seed(session)
    (flags,) = cookie_flags(local.test_client().get("/"))
    assert {"samesite=lax", "httponly"} <= flags and "secure" not in flags


class _Aged(TimestampSigner):
    """Signs as if `age` seconds ago."""

    age = 0

    def get_timestamp(self) -> int:
        return int(time.time()) - self.age


def aged_csrf_token(app: Flask, client: FlaskClient, age: int) -> str:
    """A CSRF token of this client's session, as the page would have given it `age` s ago."""
    client.get("/")
    with client.session_transaction() as session:
        raw = session["csrf_token"]
    signer = type("Signer", (_Aged,), {"age": age})
    serializer = URLSafeTimedSerializer(
        app.config["SECRET_KEY"], salt="wtf-csrf-token", signer=signer
    )
    return str(serializer.dumps(raw))


@pytest.mark.any_database
def test_csrf_tokens_expire_after_an_hour(app: Flask) -> None:
    client = app.test_client()
    stale = aged_csrf_token(app, client, 3601)
    response = client.post("/", data={"csrf_token": stale, "email": "late@example.org"})
    assert response.status_code == 400
    assert "This page has expired" in response.get_data(as_text=True)
    assert count(Subscriber) == 0 and count(Event) == 0

    fresh_enough = aged_csrf_token(app, client, 3500)
    response = client.post("/", data={"csrf_token": fresh_enough, "email": "ok@example.org"})
    assert response.status_code == 303
    assert count(Subscriber) == 1

    # The confirm page left open too long offers the button again, with a fresh token.
    with db.session() as session:
        person = session.scalars(select(Subscriber)).one()
    path = f"/confirm/{runtime_of(app).tokens.confirm_token(person.id, person.email)}"
    response = client.post(path, data={"csrf_token": aged_csrf_token(app, client, 3601)})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "Press the button again" in page
    with db.session() as session:
        assert session.scalars(select(Subscriber)).one().status is SubscriberStatus.PENDING
    match = CSRF_FIELD.search(page)
    assert match
    assert client.post(path, data={"csrf_token": match.group(1)}).status_code == 200
    with db.session() as session:
        assert session.scalars(select(Subscriber)).one().status is SubscriberStatus.ACTIVE


def form_action(page: str) -> str:
    match = re.search(r'<form method="post" action="([^"]*)" class="signup"', page)
    assert match, "no signup form"
    return match.group(1)


@pytest.mark.any_database
def test_query_parameters_never_reach_url_for(app: Flask) -> None:
    client = app.test_client()
    forged = client.get(
        "/?_external=1&_scheme=http&_anchor=x&_method=DELETE",
        headers={"Host": "evil.example"},
    )
    assert forged.status_code == 200
    assert form_action(forged.get_data(as_text=True)) == "/"
    assert "evil.example" not in forged.get_data(as_text=True)

    # The two parameters of an embedded form's link pass through, validated.
    page = client.get("/?form=my-blog&sequence=emotional-distance&_external=1").get_data(
        as_text=True
    )
    assert form_action(page) == "/?form=my-blog&amp;sequence=emotional-distance"
    response = client.post(
        "/?form=my-blog&sequence=emotional-distance",
        data={"csrf_token": csrf(client), "email": "blog@example.org"},
    )
    assert response.status_code == 303
    with db.session() as session:
        person = session.scalars(select(Subscriber)).one()
    assert person.consent_form == "my-blog"

    for bad in ("form=<script>", "form=" + "a" * 101, "sequence=Emotional_Distance", "form=a%0Ab"):
        assert client.get(f"/?{bad}").status_code == 400, bad
        response = client.post(
            f"/?{bad}", data={"csrf_token": csrf(client), "email": "bad@example.org"}
        )
        assert response.status_code == 400, bad
        assert "lower-case letters, digits and dashes" in response.get_data(as_text=True)
    assert count(Subscriber) == 1


@pytest.fixture
def full_app(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> Iterator[Flask]:
    """An app with every route registered (the dev mail viewer too), answering 500 on a bug."""
    env = base_env(tmp_path, database_url, smtp_sink, DEV_MAIL_DIR=str(tmp_path / "maildir"))
    application = make_app(env)
    application.config["PROPAGATE_EXCEPTIONS"] = False  # a bug must show as a 500 here
    with db.transaction() as session:
        ensure_seed(session)
    yield application
    db.dispose()


ODD_METHODS = ("DELETE", "PUT", "PATCH", "TRACE", "CONNECT", "PROPFIND", "FOO")


def test_method_tricks_answer_405_or_400_on_every_route(full_app: Flask) -> None:
    client = full_app.test_client()
    # Any other URL argument (an id of the admin's pages) is given "1".
    samples = {"token": "x", "key": "x", "filename": "style.css"}
    rules = list(full_app.url_map.iter_rules())
    assert {r.endpoint for r in rules} >= {
        "public.signup_page",
        "public.confirm",
        "public.unsubscribe",
        "reader.part",
        "devmail.html",
        "static",
    }

    def filled(rule: Any) -> str:
        path = str(rule.rule)
        for arg in rule.arguments:
            path = re.sub(rf"<(?:[^:>]+:)?{arg}>", samples.get(arg, "1"), path)
        return path

    posted = {filled(rule) for rule in rules if "POST" in (rule.methods or ())}
    for rule in rules:
        path = filled(rule)
        for method in ODD_METHODS:
            response = client.open(path, method=method)
            assert response.status_code == 405, f"{method} {path}: {response.status_code}"
            assert "GET" in response.headers["Allow"] or "POST" in response.headers["Allow"]
        if "GET" not in (rule.methods or ()):
            continue
        plain = client.get(path).status_code
        assert plain != 500
        for trick in ("_method=DELETE", "_method=PUT", "_external=1", "_scheme=javascript"):
            response = client.get(f"{path}?{trick}", headers={"X-HTTP-Method-Override": "DELETE"})
            assert response.status_code in (plain, 400), f"GET {path}?{trick}"
        response = client.post(
            f"{path}?_method=DELETE", headers={"X-HTTP-Method-Override": "DELETE"}
        )
        if path in posted:
            # The path takes a POST too (a form's page): the override is ignored, and the
            # POST is answered as a plain one (here: sign in first, or a missing CSRF token).
            assert response.status_code == client.post(path).status_code, f"POST {path}"
            assert response.status_code not in (200, 500), f"POST {path}?_method=DELETE"
        else:
            assert response.status_code in (400, 404, 405), f"POST {path}?_method=DELETE"


def test_trusted_proxies_are_announced_at_start(
    tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        make_app(base_env(tmp_path, sqlite_url, smtp_sink))
    assert "X-Forwarded-For" not in caplog.text
    with caplog.at_level(logging.WARNING):
        make_app(base_env(tmp_path, sqlite_url, smtp_sink, TRUSTED_PROXIES="2"))
    assert (
        "X-Forwarded-For is trusted from 2 proxies; without a proxy in front any client "
        "chooses its own address (rate limits, consent records)"
    ) in caplog.text


def test_at_most_three_confirmation_mails_a_day_whatever_the_client_address(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = app.test_client()
    token = csrf(client)
    answers = []
    for attempt in range(6):
        # Past the 5-minute resend interval each time, from a new client address each time.
        monkeypatch.setattr(clock.clock, "offset", timedelta(minutes=6 * attempt))
        response = client.post(
            "/",
            data={"csrf_token": token, "email": "victim@example.org"},
            environ_overrides={"REMOTE_ADDR": f"198.51.100.{attempt + 1}"},
        )
        answers.append((response.status_code, response.headers.get("Location")))
    assert answers == [(303, "/thanks")] * 6  # the answer never tells
    assert confirmations() == 3
    # A rolling day: once the first mail is a day old, one more may go.
    monkeypatch.setattr(clock.clock, "offset", timedelta(days=1, minutes=1))
    client.post("/", data={"csrf_token": token, "email": "victim@example.org"})
    assert confirmations() == 4
