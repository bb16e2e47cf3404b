"""The optional second factor through Flask's test client: enrolment with a QR code drawn on
the server, the code asked after the password, codes not reusable, the code step's own rate
limit and expiry, turning it off, and an owner's reset. Codes come from pyotp at the app's
clock. The clock keeps running after a test sets it, and a password check takes a while on a
busy machine, so each code is made for an instant the test sets just before sending it, and
instants that must fall in different 30-second steps are a minute or more apart (the server
takes one step either side). SQLite and PostgreSQL.
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

START = datetime(2026, 11, 2, 9, 0, 5, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
Clock = Callable[[datetime], None]


def secret_of(email: str) -> tuple[str | None, str | None]:
    with db.session() as session:
        admin = accounts.find(session, email)
        assert admin is not None
        return admin.totp_secret, admin.totp_pending_secret


def code_at(at_time: Clock, when: datetime, secret: str) -> str:
    """Set the clock to `when` and return the code of that instant."""
    at_time(when)
    return pyotp.TOTP(secret).at(when)


def wrong_code(secret: str) -> str:
    """A code that no step near the clock's present has."""
    near = {pyotp.TOTP(secret).at(clock.now() + timedelta(seconds=30 * k)) for k in range(-3, 4)}
    return next(c for c in (f"{n:06d}" for n in range(0, 1_000_000, 7919)) if c not in near)


def post(client: FlaskClient, path: str, form_page: str, **data: str) -> TestResponse:
    return client.post(path, data={"csrf_token": csrf_token(client, form_page), **data})


def enrol(client: FlaskClient, email: str, at_time: Clock, when: datetime) -> str:
    """Turn the second factor on for the signed-in `client` with a code of `when`."""
    assert post(client, "/admin/second-factor/start", "/admin/second-factor").status_code == 303
    page = client.get("/admin/second-factor").get_data(as_text=True)
    shown = re.search(r'<span class="secret">([A-Z2-7 ]+)</span>', page)
    assert shown, page
    secret = shown.group(1).replace(" ", "")
    assert secret_of(email) == (None, secret)
    assert '<svg width="' in page and "<title>QR code of your second-factor secret</title>" in page
    code = code_at(at_time, when, secret)
    done = post(client, "/admin/second-factor/confirm", "/admin/second-factor", code=code)
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
    for code in (wrong_code(pending), "abcdef", "12345", ""):
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
    secret = enrol(
        signed_in(app.test_client(), "ann@example.org"), "ann@example.org", at_time, START
    )

    client = app.test_client()
    first = password_step(client, "ann@example.org")
    assert first.status_code == 303 and first.headers["Location"] == "/admin/sign-in/code"
    # The right password alone signs nobody in.
    assert not is_signed_in(client)
    # The code the enrolment used cannot be used again within its window.
    used_at_enrolment = code_at(at_time, START, secret)
    reused = post(client, "/admin/sign-in/code", "/admin/sign-in/code", code=used_at_enrolment)
    assert reused.status_code == 401
    assert "used already" in reused.get_data(as_text=True)
    fresh = code_at(at_time, START + 2 * MINUTE, secret)
    spaced = f"{fresh[:3]} {fresh[3:]}"
    done = post(client, "/admin/sign-in/code", "/admin/sign-in/code", code=spaced)
    assert done.status_code == 303 and done.headers["Location"] == "/admin/"
    assert is_signed_in(client)
    # Signed out, the same code fails a second time.
    post(client, "/admin/sign-out", "/admin/password")
    assert password_step(client, "ann@example.org").status_code == 303
    at_time(START + 2 * MINUTE)
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
    secret = enrol(
        signed_in(app.test_client(), "ann@example.org"), "ann@example.org", at_time, START
    )
    client = app.test_client()
    at_time(START + 2 * MINUTE)
    password_step(client, "ann@example.org")
    # The code step is open for five minutes; ten later it is gone.
    late_code = code_at(at_time, START + 12 * MINUTE, secret)
    late = post(client, "/admin/sign-in/code", "/admin/sign-in", code=late_code)
    assert late.status_code == 303 and late.headers["Location"] == "/admin/sign-in"
    assert not is_signed_in(client)
    password_step(client, "ann@example.org")
    for _ in range(5):
        miss = post(client, "/admin/sign-in/code", "/admin/sign-in/code", code=wrong_code(secret))
        assert miss.status_code == 401
    good = code_at(at_time, START + 14 * MINUTE, secret)
    blocked = post(client, "/admin/sign-in/code", "/admin/sign-in/code", code=good)
    assert blocked.status_code == 429
    assert "Too many failed attempts" in blocked.get_data(as_text=True)


def test_the_holder_turns_it_off_with_a_code_and_an_owner_resets_it(
    app: Flask, at_time: Callable[[datetime], None]
) -> None:
    at_time(START)
    create_admin(app, "owner@example.org")
    create_admin(app, "ed@example.org", role="editor")
    ed_client = signed_in(app.test_client(), "ed@example.org")
    secret = enrol(ed_client, "ed@example.org", at_time, START)
    refused = post(
        ed_client, "/admin/second-factor/off", "/admin/second-factor", code=wrong_code(secret)
    )
    assert refused.status_code == 400
    assert (
        post(
            ed_client,
            "/admin/second-factor/off",
            "/admin/second-factor",
            code=code_at(at_time, START + 2 * MINUTE, secret),
        ).status_code
        == 303
    )
    assert secret_of("ed@example.org") == (None, None)
    # Set up again, then the phone is lost: an owner resets it.
    enrol(ed_client, "ed@example.org", at_time, START + 4 * MINUTE)
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
