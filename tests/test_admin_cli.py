"""create-admin (asked or generated password) and the embedded run's first owner."""

from __future__ import annotations

import re

import pytest
from flask import Flask

from newsletter import devserver
from newsletter.admins import accounts
from newsletter.db import db
from newsletter.models import AdminRole
from tests.helpers.admin import PASSWORD, create_admin


def test_create_admin_asks_for_the_password_twice(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["create-admin", "Ed@Example.org", "--role", "editor"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "editor ed@example.org can sign in at https://news.example.test/admin/" in result.output
    with db.transaction() as session:
        admin = accounts.check_credentials(session, "ed@example.org", PASSWORD)
        assert admin is not None
        assert admin.role == AdminRole.EDITOR and not admin.must_change_password


def test_create_admin_generates_a_one_time_password(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["create-admin", "ann@example.org", "--generate"])
    assert result.exit_code == 0, result.output
    shown = re.search(r"one-time password \(changed at the first sign-in\): (\S+)", result.output)
    assert shown, result.output
    with db.transaction() as session:
        admin = accounts.check_credentials(session, "ann@example.org", shown.group(1))
        assert admin is not None
        assert admin.role == AdminRole.OWNER and admin.must_change_password


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create-admin", "not-an-address", "--generate"], "not an email address"),
        (["create-admin", "ann@example.org", "--generate"], "exists already"),
        (["create-admin", "x@example.org", "--role", "root", "--generate"], "root"),
    ],
)
def test_create_admin_refuses_bad_input(app: Flask, args: list[str], message: str) -> None:
    create_admin(app, "ann@example.org")
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code != 0
    assert message in result.output
    with db.session() as session:
        assert [a.email for a in accounts.listing(session)] == ["ann@example.org"]


def test_a_short_asked_password_is_refused(app: Flask) -> None:
    result = app.test_cli_runner().invoke(
        args=["create-admin", "ed@example.org"], input="short\nshort\n"
    )
    assert result.exit_code != 0 and "at least 12 characters" in result.output


def test_the_embedded_run_makes_a_first_owner_only_when_there_is_none(app: Flask) -> None:
    with app.app_context():
        first = devserver.ensure_first_owner()
        assert first is not None
        email, password = first
        assert devserver.ensure_first_owner() is None
    with db.transaction() as session:
        admin = accounts.check_credentials(session, email, password)
        assert admin is not None
        assert admin.role == AdminRole.OWNER and admin.must_change_password
