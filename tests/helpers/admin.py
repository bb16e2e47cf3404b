"""Admin accounts for tests, and signing in the way a person does (through the real form)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from flask import Flask
from flask.testing import FlaskClient

from newsletter import clock
from newsletter.admins import accounts
from newsletter.db import db
from newsletter.models import Admin

if TYPE_CHECKING:
    from playwright.sync_api import Page

PASSWORD = "correct horse battery staple"
CSRF_FIELD = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def create_admin(app: Flask, email: str, role: str = "owner", password: str = PASSWORD) -> Admin:
    """Add an active account with a password of its own (not a one-time one)."""
    with app.app_context(), db.transaction() as session:
        return accounts.create(session, email, password, role, clock.now())


def csrf_token(client: FlaskClient, path: str) -> str:
    """The CSRF token of the (first) form on the admin page at `path`."""
    page = client.get(path).get_data(as_text=True)
    match = CSRF_FIELD.search(page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def signed_in(client: FlaskClient, email: str, password: str = PASSWORD) -> FlaskClient:
    """Sign `client` in through the sign-in form (with its CSRF token); returns the client."""
    token = csrf_token(client, "/admin/sign-in")
    response = client.post(
        "/admin/sign-in", data={"csrf_token": token, "email": email, "password": password}
    )
    assert response.status_code == 303, (response.status_code, response.get_data(as_text=True))
    return client


def sign_in_page(page: Page, base_url: str, email: str, password: str = PASSWORD) -> None:
    """Sign in with Playwright through the sign-in page; the browser lands in the admin."""
    page.goto(f"{base_url}/admin/sign-in")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(base_url) + r"/admin/(?!sign-in)"))


def is_signed_in(client: FlaskClient) -> bool:
    """Whether `client`'s session is signed in: its own password page opens, or the answer is
    the way to the sign-in page (a page every account may open, whatever else exists)."""
    response = client.get("/admin/password")
    if response.status_code == 200:
        return True
    where = response.headers.get("Location", "")
    assert response.status_code == 302 and where.startswith("/admin/sign-in"), (
        response.status_code,
        where,
    )
    return False
