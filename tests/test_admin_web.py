"""The admin's edge through Flask's test client: signing in and out, where a sign-in lands,
one-time passwords, the idle timeout, CSRF refusals and the sign-in rate limits.
SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from newsletter import clock
from newsletter.admins import accounts
from newsletter.db import db
from newsletter.models import Admin, AuditEntry
from tests.helpers.admin import PASSWORD, create_admin, csrf_token, is_signed_in, signed_in
from tests.helpers.apps import base_env, make_app
from tests.helpers.smtp import SmtpSink

NEW_PASSWORD = "a brand new passphrase"


def actions() -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


def post_sign_in(
    client: FlaskClient, email: str, password: str, path: str = "/admin/sign-in"
) -> TestResponse:
    token = csrf_token(client, "/admin/sign-in")
    return client.post(path, data={"csrf_token": token, "email": email, "password": password})


def location(response: TestResponse) -> str:
    return urlsplit(response.headers.get("Location", "")).path


def test_an_admin_page_sends_a_stranger_to_sign_in_and_back(app: Flask) -> None:
    create_admin(app, "ann@example.org")
    client = app.test_client()
    response = client.get("/admin/password?x=1")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/sign-in?next=/admin/password?x%3D1"
    answer = post_sign_in(
        client, "ann@example.org", PASSWORD, "/admin/sign-in?next=/admin/password?x%3D1"
    )
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/admin/password?x=1"
    page = client.get("/admin/password")
    assert page.status_code == 200
    assert "ann@example.org" in page.get_data(as_text=True)
    assert actions()[-1] == "admin.sign_in"


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/admin/",
        "//evil.example/admin/",
        "/\\evil.example",
        "/reader/x",
        "/admin",
    ],
)
def test_sign_in_never_lands_outside_the_admin(app: Flask, target: str) -> None:
    create_admin(app, "ann@example.org")
    client = app.test_client()
    token = csrf_token(client, "/admin/sign-in")
    answer = client.post(
        "/admin/sign-in",
        query_string={"next": target},
        data={"csrf_token": token, "email": "ann@example.org", "password": PASSWORD},
    )
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/admin/"


def test_wrong_password_unknown_address_and_inactive_account_get_the_same_answer(
    app: Flask,
) -> None:
    owner = create_admin(app, "owner@example.org")
    create_admin(app, "ed@example.org", role="editor")
    with db.transaction() as session:
        ed = accounts.find(session, "ed@example.org")
        assert ed is not None
        accounts.set_active(session, session.get(Admin, owner.id), ed, False)  # type: ignore[arg-type]
    bodies = set()
    for email, password in [
        ("owner@example.org", "not the password"),
        ("nobody@example.org", PASSWORD),
        ("ed@example.org", PASSWORD),
    ]:
        response = post_sign_in(app.test_client(), email, password)
        assert response.status_code == 401
        body = response.get_data(as_text=True)
        assert "do not match an active account" in body
        bodies.add(body.replace(email, "EMAIL").split('name="csrf_token"')[0])
    assert len(bodies) == 1
    assert actions().count("admin.sign_in_failed") == 3


def test_signing_out_ends_the_session(app: Flask) -> None:
    create_admin(app, "ann@example.org")
    client = signed_in(app.test_client(), "ann@example.org")
    token = csrf_token(client, "/admin/password")
    out = client.post("/admin/sign-out", data={"csrf_token": token})
    assert out.status_code == 303 and location(out) == "/admin/sign-in"
    assert not is_signed_in(client)
    assert actions()[-1] == "admin.sign_out"


@pytest.mark.parametrize("path", ["/admin/sign-in", "/admin/sign-out", "/admin/password"])
def test_every_admin_post_without_a_csrf_token_is_refused(app: Flask, path: str) -> None:
    create_admin(app, "ann@example.org")
    client = signed_in(app.test_client(), "ann@example.org")
    before = actions()
    data = {
        "email": "ann@example.org",
        "password": PASSWORD,
        "current": PASSWORD,
        "new": NEW_PASSWORD,
        "confirm": NEW_PASSWORD,
    }
    for token in (None, "forged-token"):
        sent = data if token is None else {**data, "csrf_token": token}
        response = client.post(path, data=sent)
        assert response.status_code == 400
        assert "This page has expired" in response.get_data(as_text=True)
    assert actions() == before
    # Still signed in, with the old password.
    assert is_signed_in(client)
    with db.transaction() as session:
        assert accounts.check_credentials(session, "ann@example.org", PASSWORD) is not None


def test_a_one_time_password_must_be_replaced_first(app: Flask) -> None:
    one_time = accounts.generate_password()
    with db.transaction() as session:
        accounts.create(session, "ann@example.org", one_time, "owner", clock.now(), one_time=True)
    client = signed_in(app.test_client(), "ann@example.org", one_time)
    response = client.get("/admin/")
    assert response.status_code == 302 and location(response) == "/admin/password"
    page = client.get("/admin/password").get_data(as_text=True)
    assert "one-time password" in page and "Current password" not in page
    token = csrf_token(client, "/admin/password")
    short = client.post(
        "/admin/password", data={"csrf_token": token, "new": "short", "confirm": "short"}
    )
    assert short.status_code == 400
    assert "at least 12 characters" in short.get_data(as_text=True)
    done = client.post(
        "/admin/password", data={"csrf_token": token, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    )
    assert done.status_code == 303
    assert is_signed_in(client)
    with db.transaction() as session:
        assert accounts.check_credentials(session, "ann@example.org", one_time) is None
        assert accounts.check_credentials(session, "ann@example.org", NEW_PASSWORD) is not None


def test_a_password_change_elsewhere_signs_this_browser_out(app: Flask) -> None:
    create_admin(app, "ann@example.org")
    here = signed_in(app.test_client(), "ann@example.org")
    there = signed_in(app.test_client(), "ann@example.org")
    token = csrf_token(there, "/admin/password")
    changed = there.post(
        "/admin/password",
        data={
            "csrf_token": token,
            "current": PASSWORD,
            "new": NEW_PASSWORD,
            "confirm": NEW_PASSWORD,
        },
    )
    assert changed.status_code == 303
    assert is_signed_in(there)
    assert not is_signed_in(here)


def test_the_session_ends_after_the_idle_minutes(
    app: Flask, at_time: Callable[[datetime], None]
) -> None:
    create_admin(app, "ann@example.org")
    start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    at_time(start)
    client = signed_in(app.test_client(), "ann@example.org")
    # Each request restarts the idle clock: 29 minutes, then 29 more, is never 30 idle.
    at_time(start + timedelta(minutes=29))
    assert is_signed_in(client)
    at_time(start + timedelta(minutes=58))
    assert is_signed_in(client)
    # A minute past the limit (the clock runs on between setting it and the request).
    at_time(start + timedelta(minutes=89))
    response = client.get("/admin/")
    assert response.status_code == 302 and location(response) == "/admin/sign-in"
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "signed out after 30 minutes without activity" in page
    assert not is_signed_in(client)
    with db.session() as session:
        last = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
    assert last is not None and (last.action, last.after) == ("admin.sign_out", {"idle": True})


@pytest.fixture
def limited_app(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> Iterator[Flask]:
    """An app whose sign-in limits are small and hourly (no minute boundary to race)."""
    application = make_app(
        base_env(
            tmp_path,
            database_url,
            smtp_sink,
            ADMIN_SIGN_IN_LIMIT_PER_ACCOUNT="3 per hour",
            ADMIN_SIGN_IN_LIMIT_PER_ADDRESS="6 per hour",
        )
    )
    yield application
    db.dispose()


def try_sign_in(client: FlaskClient, email: str, password: str, address: str) -> int:
    token = csrf_token(client, "/admin/sign-in")
    data = {"csrf_token": token, "email": email, "password": password}
    return client.post(
        "/admin/sign-in", data=data, environ_base={"REMOTE_ADDR": address}
    ).status_code


def test_failed_sign_ins_are_limited_per_account(limited_app: Flask) -> None:
    create_admin(limited_app, "ann@example.org")
    create_admin(limited_app, "bob@example.org")
    client = limited_app.test_client()
    for _ in range(3):
        assert try_sign_in(client, "ann@example.org", "wrong password!!", "192.0.2.1") == 401
    # The fourth try is refused before any password check, even with the right password,
    # and from another address.
    refused = client.post(
        "/admin/sign-in",
        data={
            "csrf_token": csrf_token(client, "/admin/sign-in"),
            "email": "ANN@example.org",
            "password": PASSWORD,
        },
        environ_base={"REMOTE_ADDR": "192.0.2.3"},
    )
    assert refused.status_code == 429
    assert "Too many failed attempts" in refused.get_data(as_text=True)
    # An unknown address is limited in the same way (nothing tells it apart).
    for _ in range(3):
        assert try_sign_in(client, "nobody@example.org", "wrong password!!", "192.0.2.2") == 401
    assert try_sign_in(client, "nobody@example.org", "wrong password!!", "192.0.2.2") == 429
    # Another account from the first address still signs in.
    assert try_sign_in(client, "bob@example.org", PASSWORD, "192.0.2.1") == 303
    assert actions().count("admin.sign_in_failed") == 6


def test_failed_sign_ins_from_one_client_address_are_limited(limited_app: Flask) -> None:
    create_admin(limited_app, "ann@example.org")
    client = limited_app.test_client()
    for n in range(6):
        assert try_sign_in(client, f"guess{n}@example.org", "wrong password!!", "192.0.2.1") == 401
    assert try_sign_in(client, "ann@example.org", PASSWORD, "192.0.2.1") == 429
    # The same account from another address is not held up; successes do not count.
    assert try_sign_in(client, "ann@example.org", PASSWORD, "192.0.2.2") == 303
    assert try_sign_in(client, "ann@example.org", PASSWORD, "192.0.2.2") == 303
