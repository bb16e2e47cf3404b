"""The optional second factor through Flask's test client: enrolment with a QR code drawn on
the server, the code asked after the password, codes not reusable, the code step's own rate
limit and expiry, turning it off, and an owner's reset. Codes come from pyotp at the app's
clock, which each test fixes. SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pyotp
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from newsletter import clock
from newsletter.admins import accounts
from newsletter.db import db
from newsletter.models import AuditEntry
from tests.helpers.admin import PASSWORD, create_admin, csrf_token, is_signed_in, signed_in

# Five seconds into a 30-second step: the next step starts at +25 s.
START = datetime(2026, 11, 2, 9, 0, 5, tzinfo=UTC)


def secret_of(email: str) -> tuple[str | None, str | None]:
    with db.session() as session:
        admin = accounts.find(session, email)
        assert admin is not None
        return admin.totp_secret, admin.totp_pending_secret


def code_now(secret: str) -> str:
    return pyotp.TOTP(secret).at(clock.now())


def post(client: FlaskClient, path: str, form_page: str, **data: str) -> TestResponse:
    return client.post(path, data={"csrf_token": csrf_token(client, form_page), **data})


def enrol(app: Flask, client: FlaskClient, email: str) -> str:
    """Turn the second factor on for the signed-in `client`; the confirmed secret."""
    assert post(client, "/admin/second-factor/start", "/admin/second-factor").status_code == 303
    page = client.get("/admin/second-factor").get_data(as_text=True)
    shown = re.search(r'<span class="secret">([A-Z2-7 ]+)</span>', page)
    assert shown, page
    secret = shown.group(1).replace(" ", "")
    assert secret_of(email) == (None, secret)
    assert '<svg width="' in page and "<title>QR code of your second-factor secret</title>" in page
    done = post(
        client, "/admin/second-factor/confirm", "/admin/second-factor", code=code_now(secret)
    )
    assert done.status_code == 303
    assert secret_of(email) == (secret, None)
    return secret


def password_step(client: FlaskClient, email: str, password: str = PASSWORD) -> TestResponse:
    return post(client, "/admin/sign-in", "/admin/sign-in", email=email, password=password)


def actions() -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


def test_a_wrong_first_code_leaves_the_second_factor_off(
    app: Flask, at_time: Callable[[datetime], None]
) -> None:
    at_time(START)
    create_admin(app, "ann@example.org")
    client = signed_in(app.test_client(), "ann@example.org")
    post(client, "/admin/second-factor/start", "/admin/second-factor")
    _, pending = secret_of("ann@example.org")
    assert pending is not None
    wrong = str((int(code_now(pending)) + 1) % 1_000_000).zfill(6)
    for code in (wrong, "abcdef", "12345", ""):
        refused = post(client, "/admin/second-factor/confirm", "/admin/second-factor", code=code)
        assert refused.status_code == 400
        assert 'id="code-error"' in refused.get_data(as_text=True)
    assert secret_of("ann@example.org") == (None, pending)
    assert "admin.second_factor_on" not in actions()


def test_sign_in_asks_for_the_code_after_the_password_and_a_code_works_once(
    app: Flask, at_time: Callable[[datetime], None]
) -> None:
    at_time(START)
    create_admin(app, "ann@example.org")
    secret = enrol(app, signed_in(app.test_client(), "ann@example.org"), "ann@example.org")
    used_at_enrolment = code_now(secret)

    client = app.test_client()
    first = password_step(client, "ann@example.org")
    assert first.status_code == 303 and first.headers["Location"] == "/admin/sign-in/code"
    # The right password alone signs nobody in.
    assert not is_signed_in(client)
    # The code the enrolment used cannot be used again within its window.
    reused = post(client, "/admin/sign-in/code", "/admin/sign-in/code", code=used_at_enrolment)
    assert reused.status_code == 401
    assert "used already" in reused.get_data(as_text=True)
    at_time(START + timedelta(seconds=30))
    fresh = code_now(secret)
    spaced = f"{fresh[:3]} {fresh[3:]}"
    done = post(client, "/admin/sign-in/code", "/admin/sign-in/code", code=spaced)
    assert done.status_code == 303 and done.headers["Location"] == "/admin/"
    assert is_signed_in(client)
    # Signed out, the same code fails a second time.
    post(client, "/admin/sign-out", "/admin/password")
    assert password_step(client, "ann@example.org").status_code == 303
    again = post(client, "/admin/sign-in/code", "/admin/sign-in/code", code=fresh)
    assert again.status_code == 401
    assert actions().count("admin.sign_in") == 2  # the enrolling session and the one above
    with db.session() as session:
        last_in = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "admin.sign_in")
            .order_by(AuditEntry.id.desc())
        ).first()
    assert last_in is not None and last_in.after == {"second_factor": True}


def test_the_code_step_expires_and_is_rate_limited(
    app: Flask, at_time: Callable[[datetime], None]
) -> None:
    at_time(START)
    create_admin(app, "ann@example.org")
    secret = enrol(app, signed_in(app.test_client(), "ann@example.org"), "ann@example.org")
    client = app.test_client()
    password_step(client, "ann@example.org")
    at_time(START + timedelta(minutes=5, seconds=30))
    late = post(client, "/admin/sign-in/code", "/admin/sign-in", code=code_now(secret))
    assert late.status_code == 303 and late.headers["Location"] == "/admin/sign-in"
    assert not is_signed_in(client)
    password_step(client, "ann@example.org")
    for _ in range(5):
        miss = post(client, "/admin/sign-in/code", "/admin/sign-in/code", code="000000")
        assert miss.status_code == 401
    blocked = post(client, "/admin/sign-in/code", "/admin/sign-in/code", code=code_now(secret))
    assert blocked.status_code == 429
    assert "Too many failed attempts" in blocked.get_data(as_text=True)


def test_the_holder_turns_it_off_with_a_code_and_an_owner_resets_it(
    app: Flask, at_time: Callable[[datetime], None]
) -> None:
    at_time(START)
    create_admin(app, "owner@example.org")
    create_admin(app, "ed@example.org", role="editor")
    ed_client = signed_in(app.test_client(), "ed@example.org")
    secret = enrol(app, ed_client, "ed@example.org")
    at_time(START + timedelta(seconds=30))
    refused = post(ed_client, "/admin/second-factor/off", "/admin/second-factor", code="000000")
    assert refused.status_code == 400
    assert (
        post(
            ed_client, "/admin/second-factor/off", "/admin/second-factor", code=code_now(secret)
        ).status_code
        == 303
    )
    assert secret_of("ed@example.org") == (None, None)
    # Set up again, then the phone is lost: an owner resets it.
    enrol(app, ed_client, "ed@example.org")
    owner = signed_in(app.test_client(), "owner@example.org")
    with db.session() as session:
        ed = accounts.find(session, "ed@example.org")
    assert ed is not None
    page = owner.get("/admin/accounts").get_data(as_text=True)
    assert f"/admin/accounts/{ed.id}/second-factor/reset" in page
    reset = post(owner, f"/admin/accounts/{ed.id}/second-factor/reset", "/admin/accounts")
    assert reset.status_code == 303
    assert secret_of("ed@example.org") == (None, None)
    assert not is_signed_in(ed_client)  # their sessions ended
    signed_in(app.test_client(), "ed@example.org")  # the password alone, again
    assert actions().count("admin.second_factor_reset") == 1
