"""The admin pages through Flask's test client: every admin URL behind a role, an editor
refused on every owner URL, every admin POST refused without its CSRF token, the accounts page
(the last owner kept), the audit log's filters and pages, and outsiders' values shown as text.
SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from newsletter import clock
from newsletter.admins import accounts, audit
from newsletter.db import db
from newsletter.models import Admin, AdminRole, AuditEntry
from tests.helpers.admin import create_admin, csrf_token, is_signed_in, signed_in

# Pages anyone may open: the way in.
OPEN_ENDPOINTS = {
    "admin.sign_in_page",
    "admin.sign_in",
    "admin.sign_in_code_page",
    "admin.sign_in_code",
}
HOSTILE = [
    "<script>alert(1)</script>",
    "\u202egnp.exe",  # a right-to-left override
    "line\r\nInjected: header",
    '"><img src=x onerror=alert(1)>',
]


def audit_count() -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)


def admin_rules(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, URL) of every admin route, with 1 for each id in the URL."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("admin."):
            continue
        url = re.sub(r"<(?:int:)?\w+>", "1", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, method, url))
    return found


def owner_and_editor(app: Flask) -> tuple[FlaskClient, FlaskClient]:
    create_admin(app, "owner@example.org")
    create_admin(app, "ed@example.org", role="editor")
    owner = signed_in(app.test_client(), "owner@example.org")
    editor = signed_in(app.test_client(), "ed@example.org")
    return owner, editor


@pytest.mark.any_database
def test_every_admin_view_has_a_role(app: Flask) -> None:
    for endpoint, _method, url in admin_rules(app):
        if endpoint in OPEN_ENDPOINTS:
            continue
        view = app.view_functions[endpoint]
        assert getattr(view, "admin_role", None) in ("owner", "editor"), (endpoint, url)


def test_an_editor_is_refused_every_owner_url(app: Flask) -> None:
    owner, editor = owner_and_editor(app)
    token = csrf_token(editor, "/admin/password")
    owner_rules = [
        (endpoint, method, url)
        for endpoint, method, url in admin_rules(app)
        if getattr(app.view_functions[endpoint], "admin_role", None) == "owner"
    ]
    assert {e for e, _, _ in owner_rules} >= {
        "admin.accounts",
        "admin.add_account",
        "admin.change_role",
        "admin.deactivate",
        "admin.reset_second_factor",
    }
    before = audit_count()
    for _endpoint, method, url in owner_rules:
        data = {"csrf_token": token, "email": "x@example.org", "role": "owner"}
        response = editor.open(url, method=method, data=data if method == "POST" else None)
        assert response.status_code == 403, (method, url, response.status_code)
        # The owner reaches the same pages.
        if method == "GET":
            assert owner.get(url).status_code == 200
    assert audit_count() == before
    with db.session() as session:
        ed = accounts.find(session, "ed@example.org")
        assert ed is not None and ed.role == AdminRole.EDITOR


def test_every_admin_post_without_a_valid_csrf_token_changes_nothing(app: Flask) -> None:
    owner, _ = owner_and_editor(app)
    posts = [(e, url) for e, method, url in admin_rules(app) if method == "POST"]
    assert len(posts) >= 10
    before = audit_count()
    for endpoint, url in posts:
        for token in (None, "forged"):
            data = {"email": "new@example.org", "role": "owner", "code": "123456"}
            if token is not None:
                data["csrf_token"] = token
            response = owner.post(url, data=data)
            assert response.status_code == 400, (endpoint, response.status_code)
    assert audit_count() == before
    assert owner.get("/admin/accounts").status_code == 200


def test_the_navigation_shows_owners_the_accounts_page_only(app: Flask) -> None:
    owner, editor = owner_and_editor(app)
    owner_page = owner.get("/admin/password").get_data(as_text=True)
    editor_page = editor.get("/admin/password").get_data(as_text=True)
    assert 'href="/admin/accounts"' in owner_page and 'href="/admin/audit"' in owner_page
    assert 'href="/admin/accounts"' not in editor_page and 'href="/admin/audit"' in editor_page
    # Pages that do not exist yet are not listed.
    if "admin.subscribers" not in app.view_functions:
        assert "Subscribers" not in owner_page
    assert 'href="#main"' in owner_page and 'id="main"' in owner_page


def test_an_owner_adds_an_account_that_must_choose_its_password(app: Flask) -> None:
    owner, _ = owner_and_editor(app)
    token = csrf_token(owner, "/admin/accounts")
    added = owner.post(
        "/admin/accounts", data={"csrf_token": token, "email": "New@Example.org", "role": "editor"}
    )
    assert added.status_code == 200
    body = added.get_data(as_text=True)
    match = re.search(
        r'One-time password for <strong>new@example.org</strong>: <span class="secret">([^<]+)<',
        body,
    )
    assert match, body
    newcomer = signed_in(
        FlaskClient(app, app.response_class, use_cookies=True), "new@example.org", match.group(1)
    )
    assert newcomer.get("/admin/audit").headers["Location"] == "/admin/password"
    with db.session() as session:
        entry = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "admin.create")
            .order_by(AuditEntry.id.desc())
        ).first()
    assert entry is not None and entry.actor_email == "owner@example.org"
    assert match.group(1) not in str(entry.after)


@pytest.mark.parametrize(
    ("email", "role", "message"),
    [
        ("not an address", "editor", "not an email address"),
        ("ed@example.org", "editor", "exists already"),
        ("new@example.org", "root", "Not a valid choice"),
    ],
)
def test_a_bad_new_account_is_refused_beside_the_field(
    app: Flask, email: str, role: str, message: str
) -> None:
    owner, _ = owner_and_editor(app)
    token = csrf_token(owner, "/admin/accounts")
    before = audit_count()
    refused = owner.post(
        "/admin/accounts", data={"csrf_token": token, "email": email, "role": role}
    )
    assert refused.status_code == 400
    assert message in refused.get_data(as_text=True)
    assert audit_count() == before


def test_the_last_owner_stays_an_owner_on_the_accounts_page(app: Flask) -> None:
    owner, editor = owner_and_editor(app)
    with db.session() as session:
        me = accounts.find(session, "owner@example.org")
        ed = accounts.find(session, "ed@example.org")
    assert me is not None and ed is not None
    token = csrf_token(owner, "/admin/accounts")
    for url, data in [
        (f"/admin/accounts/{me.id}/role", {"role": "editor"}),
        (f"/admin/accounts/{me.id}/deactivate", {}),
    ]:
        refused = owner.post(url, data={"csrf_token": token, **data})
        assert refused.status_code == 400
        assert "last owner" in refused.get_data(as_text=True)
    # Promote the editor; now the first owner may step down.
    assert (
        owner.post(
            f"/admin/accounts/{ed.id}/role", data={"csrf_token": token, "role": "owner"}
        ).status_code
        == 303
    )
    # The promoted account's old session ended with the role change.
    assert not is_signed_in(editor)
    assert (
        owner.post(
            f"/admin/accounts/{me.id}/role", data={"csrf_token": token, "role": "editor"}
        ).status_code
        == 303
    )
    assert not is_signed_in(owner)  # my own session ended too
    with db.session() as session:
        roles = {a.email: a.role.value for a in accounts.listing(session)}
    assert roles == {"owner@example.org": "editor", "ed@example.org": "owner"}


def test_deactivating_an_account_ends_its_session(app: Flask) -> None:
    owner, editor = owner_and_editor(app)
    with db.session() as session:
        ed = accounts.find(session, "ed@example.org")
    assert ed is not None
    token = csrf_token(owner, "/admin/accounts")
    assert is_signed_in(editor)
    assert (
        owner.post(f"/admin/accounts/{ed.id}/deactivate", data={"csrf_token": token}).status_code
        == 303
    )
    assert not is_signed_in(editor)
    page = owner.get("/admin/accounts").get_data(as_text=True)
    assert "deactivated" in page and "Reactivate" in page
    assert (
        owner.post(f"/admin/accounts/{ed.id}/reactivate", data={"csrf_token": token}).status_code
        == 303
    )
    signed_in(app.test_client(), "ed@example.org")
    assert (
        owner.post("/admin/accounts/999/deactivate", data={"csrf_token": token}).status_code == 404
    )


def add_entries(app: Flask, owner_email: str) -> None:
    start = clock.now() - timedelta(days=40)
    with db.transaction() as session:
        owner = accounts.find(session, owner_email)
        for n in range(120):
            entry = audit.record(
                session,
                actor=owner if n % 2 else None,
                action="sequence.publish" if n % 3 else "subscriber.erase",
                target=f"sequence:{n}",
                after={"n": n},
            )
            entry.created_at = start + timedelta(hours=8 * n)


def test_the_audit_log_pages_newest_first_with_its_filters_kept(app: Flask) -> None:
    owner, editor = owner_and_editor(app)
    add_entries(app, "owner@example.org")
    with db.session() as session:
        me = accounts.find(session, "owner@example.org")
    assert me is not None
    seen: list[int] = []
    url: str | None = f"/admin/audit?action=sequence.publish&actor={me.id}"
    pages = 0
    while url:
        response = editor.get(url)
        assert response.status_code == 200
        body = response.get_data(as_text=True)
        seen.extend(int(n) for n in re.findall(r"<bdi>sequence:(\d+)</bdi>", body))
        nxt = re.search(r'href="([^"]+)">Older entries', body)
        url = nxt.group(1).replace("&amp;", "&") if nxt else None
        pages += 1
    expected = [n for n in reversed(range(120)) if n % 2 and n % 3]
    assert seen == expected and pages == 1 + len(expected) // 50
    recent = editor.get("/admin/audit?period=7d&action=sequence.publish").get_data(as_text=True)
    recent_numbers = [int(n) for n in re.findall(r"<bdi>sequence:(\d+)</bdi>", recent)]
    assert recent_numbers and all(n >= 120 - 7 * 3 - 1 for n in recent_numbers)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("actor=abc", "Choose an account from the list."),
        ("actor=999", "Choose an account from the list."),
        ("action=<script>", "Choose an action from the list."),
        ("action=" + "a" * 65, "Choose an action from the list."),
        ("period=1y", "Choose a period from the list."),
        ("after=yesterday", "That page link is broken"),
        ("after=99999999999999999999-1", "That page link is broken"),
    ],
)
def test_an_unknown_audit_filter_is_refused_beside_it(app: Flask, query: str, message: str) -> None:
    _, editor = owner_and_editor(app)
    response = editor.get(f"/admin/audit?{query}")
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert message in body and "<script>" not in body


def test_outsiders_values_are_text_on_the_audit_and_accounts_pages(app: Flask) -> None:
    owner, _ = owner_and_editor(app)
    stranger = app.test_client()
    for value in HOSTILE:
        token = csrf_token(stranger, "/admin/sign-in")
        stranger.post(
            "/admin/sign-in",
            data={"csrf_token": token, "email": value, "password": value},
            environ_base={"REMOTE_ADDR": "192.0.2.9"},
        )
    with db.transaction() as session:
        # A row stored before today's address rules, or written straight into the database.
        session.add(
            Admin(
                email=HOSTILE[0] + "@example.org",
                password_hash="x",
                role=AdminRole.EDITOR,
                active=True,
                must_change_password=False,
                session_epoch=0,
                created_at=clock.now(),
            )
        )
        audit.record(
            session,
            actor=None,
            action="subscriber.erase",
            target=HOSTILE[3],
            before={"name": HOSTILE[0], "ua": HOSTILE[2]},
            after={"form": HOSTILE[1]},
        )
    for page in (owner.get("/admin/audit"), owner.get("/admin/accounts")):
        body = page.get_data(as_text=True)
        assert page.status_code == 200
        assert "<script>alert" not in body and "<img src=x" not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    audit_page = owner.get("/admin/audit").get_data(as_text=True)
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in audit_page
    assert "<bdi>admin:\u202egnp.exe</bdi>" in audit_page
    assert "Injected: header" in audit_page
