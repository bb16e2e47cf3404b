"""Using the public pages through Flask's test client the way a browser does."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

CSRF_FIELD = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def csrf(client: FlaskClient, path: str = "/") -> str:
    """The CSRF token of the form on the page at `path`."""
    page = client.get(path).get_data(as_text=True)
    match = CSRF_FIELD.search(page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def post_signup(client: FlaskClient, email: str, **fields: str) -> tuple[int, str, str]:
    """Submit the signup form; (status, Location, body)."""
    data = {"csrf_token": csrf(client), "email": email, **fields}
    response = client.post("/", data=data)
    return (
        response.status_code,
        response.headers.get("Location", ""),
        response.get_data(as_text=True),
    )


def confirm(client: FlaskClient, path: str) -> TestResponse:
    """Follow a confirmation link from a mail and press the page's button."""
    return client.post(path, data={"csrf_token": csrf(client, path)})
