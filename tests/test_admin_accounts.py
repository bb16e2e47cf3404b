"""The admins room: accounts, argon2 hashes rehashed at sign-in, roles and the last owner, and
the audit log's entries and pages. SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from argon2 import PasswordHasher
from flask import Flask
from sqlalchemy import select

from newsletter import clock
from newsletter.admins import accounts, audit
from newsletter.db import db
from newsletter.models import Admin, AdminRole, AuditEntry, Base
from tests.helpers.admin import PASSWORD, create_admin

OTHER_PASSWORD = "another long passphrase"


def entries(action: str | None = None) -> list[AuditEntry]:
    with db.session() as session:
        query = select(AuditEntry).order_by(AuditEntry.id)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        return list(session.scalars(query))


def load(email: str) -> Admin:
    with db.session() as session:
        admin = accounts.find(session, email)
        assert admin is not None
        return admin


def test_the_schema_of_the_admin_tables_matches_the_models(app: Flask) -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    ours = [d for d in diff if "admins" in repr(d) or "audit_entries" in repr(d)]
    assert ours == []


def test_an_account_signs_in_with_its_password_only(app: Flask) -> None:
    create_admin(app, "Ann@Example.org")
    with db.transaction() as session:
        admin = accounts.check_credentials(session, "  ann@EXAMPLE.org ", PASSWORD)
        assert admin is not None and admin.email == "ann@example.org"
        assert accounts.check_credentials(session, "ann@example.org", PASSWORD + "x") is None
        assert accounts.check_credentials(session, "bob@example.org", PASSWORD) is None
    failed = entries("admin.sign_in_failed")
    assert [(e.actor_email, e.target, e.after) for e in failed] == [
        ("ann@example.org", "admin:ann@example.org", {"reason": "wrong password"}),
        (None, "admin:bob@example.org", {"reason": "unknown account"}),
    ]
    created = entries("admin.create")
    assert created[0].after == {
        "email": "ann@example.org",
        "role": "owner",
        "one_time_password": False,
    }


def test_a_hash_made_with_older_parameters_is_replaced_at_sign_in(app: Flask) -> None:
    create_admin(app, "ann@example.org")
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    with db.transaction() as session:
        admin = accounts.find(session, "ann@example.org")
        assert admin is not None
        admin.password_hash = weak.hash(PASSWORD)
    old_hash = load("ann@example.org").password_hash
    assert accounts.hasher.check_needs_rehash(old_hash)
    with db.transaction() as session:
        assert accounts.check_credentials(session, "ann@example.org", PASSWORD) is not None
    new_hash = load("ann@example.org").password_hash
    assert new_hash != old_hash
    assert not accounts.hasher.check_needs_rehash(new_hash)
    assert accounts.hasher.verify(new_hash, PASSWORD)
    # A wrong password changes nothing.
    with db.transaction() as session:
        assert accounts.check_credentials(session, "ann@example.org", "wrong password!!") is None
    assert load("ann@example.org").password_hash == new_hash


def test_a_deactivated_account_cannot_sign_in(app: Flask) -> None:
    owner = create_admin(app, "owner@example.org")
    create_admin(app, "ed@example.org", role="editor")
    with db.transaction() as session:
        actor = session.get(Admin, owner.id)
        ed = accounts.find(session, "ed@example.org")
        assert actor is not None and ed is not None
        accounts.set_active(session, actor, ed, False)
    with db.transaction() as session:
        assert accounts.check_credentials(session, "ed@example.org", PASSWORD) is None
    assert entries("admin.sign_in_failed")[-1].after == {"reason": "inactive"}
    assert entries("admin.deactivate")[0].actor_email == "owner@example.org"


@pytest.mark.parametrize(
    ("email", "password", "field"),
    [
        ("not an address", PASSWORD, "email"),
        ("<script>@example.org", PASSWORD, "email"),
        ("ann@example.org", "short", "password"),
        ("ANN@example.org", PASSWORD, "email"),  # exists already, in another case
    ],
)
def test_a_bad_account_is_refused_with_the_field_named(
    app: Flask, email: str, password: str, field: str
) -> None:
    create_admin(app, "ann@example.org")
    with pytest.raises(accounts.AccountError) as raised, db.transaction() as session:
        accounts.create(session, email, password, "editor", clock.now())
    assert raised.value.field == field
    with db.session() as session:
        assert len(accounts.listing(session)) == 1
    assert len(entries("admin.create")) == 1


def test_the_last_owner_cannot_be_demoted_or_deactivated(app: Flask) -> None:
    first = create_admin(app, "first@example.org")
    with db.transaction() as session:
        me = session.get(Admin, first.id)
        assert me is not None
        with pytest.raises(accounts.AccountError, match="last owner"):
            accounts.set_role(session, me, me, "editor")
        with pytest.raises(accounts.AccountError, match="last owner"):
            accounts.set_active(session, me, me, False)
    create_admin(app, "second@example.org")
    with db.transaction() as session:
        me = session.get(Admin, first.id)
        assert me is not None
        accounts.set_role(session, me, me, "editor")
        second = accounts.find(session, "second@example.org")
        assert second is not None
        with pytest.raises(accounts.AccountError, match="last owner"):
            accounts.set_active(session, me, second, False)
    assert load("first@example.org").role == AdminRole.EDITOR
    change = entries("admin.role_change")[0]
    assert (change.before, change.after) == ({"role": "owner"}, {"role": "editor"})


def test_a_password_change_ends_the_other_sessions(app: Flask) -> None:
    ann = create_admin(app, "ann@example.org")
    old_id = ann.get_id()
    with db.transaction() as session:
        assert accounts.by_epoch_id(session, old_id) is not None
        me = session.get(Admin, ann.id)
        assert me is not None
        with pytest.raises(accounts.AccountError) as wrong:
            accounts.change_password(session, me, "not it at all", OTHER_PASSWORD, OTHER_PASSWORD)
        assert wrong.value.field == "current"
        with pytest.raises(accounts.AccountError) as differ:
            accounts.change_password(session, me, PASSWORD, OTHER_PASSWORD, OTHER_PASSWORD + "!")
        assert differ.value.field == "confirm"
        accounts.change_password(session, me, PASSWORD, OTHER_PASSWORD, OTHER_PASSWORD)
    with db.transaction() as session:
        assert accounts.by_epoch_id(session, old_id) is None
        assert accounts.check_credentials(session, "ann@example.org", PASSWORD) is None
        assert accounts.check_credentials(session, "ann@example.org", OTHER_PASSWORD) is not None
    assert len(entries("admin.password_change")) == 1


@pytest.mark.parametrize("user_id", ["", "1", "x.0", "1.x", "99.0", "1.1", "-1.0"])
def test_a_session_id_that_names_no_current_account_loads_nobody(app: Flask, user_id: str) -> None:
    create_admin(app, "ann@example.org")
    with db.session() as session:
        assert accounts.by_epoch_id(session, "1.0") is not None
        assert accounts.by_epoch_id(session, user_id) is None


def test_entries_carry_the_origin_and_page_newest_first_by_keyset(app: Flask) -> None:
    ann = create_admin(app, "ann@example.org")
    start = clock.now()
    with db.transaction() as session, audit.origin("192.0.2.7"):
        actor = session.get(Admin, ann.id)
        for n in range(7):
            entry = audit.record(
                session,
                actor=actor if n % 2 else None,
                action="sequence.publish" if n % 3 else "subscriber.erase",
                target=f"thing:{n}",
                before={"n": n},
                after={"n": n + 1},
            )
            # Two entries share each instant: the id orders them.
            entry.created_at = start + timedelta(seconds=n // 2)
    everything = audit.AuditFilter()
    seen: list[str] = []
    cursor = None
    with db.session() as session:
        while True:
            rows, cursor = audit.page(session, everything, after=cursor, size=3)
            seen.extend(r.target for r in rows if r.target.startswith("thing:"))
            assert all(r.ip == "192.0.2.7" for r in rows if r.target.startswith("thing:"))
            if cursor is None:
                break
        assert seen == [f"thing:{n}" for n in reversed(range(7))]
        by_ann, _ = audit.page(session, audit.AuditFilter(actor_id=ann.id))
        assert [r.target for r in by_ann] == ["thing:5", "thing:3", "thing:1"]
        erased, _ = audit.page(session, audit.AuditFilter(action="subscriber.erase"))
        assert [r.target for r in erased] == ["thing:6", "thing:3", "thing:0"]
        window = audit.AuditFilter(
            since=start + timedelta(seconds=1), until=start + timedelta(seconds=2)
        )
        assert [r.target for r in audit.page(session, window)[0]] == ["thing:3", "thing:2"]
        assert audit.actions(session) == ["admin.create", "sequence.publish", "subscriber.erase"]


def test_an_entry_keeps_its_author_after_the_account_is_gone(app: Flask) -> None:
    ann = create_admin(app, "ann@example.org")
    with db.transaction() as session:
        audit.record(session, actor=session.get(Admin, ann.id), action="x.y", target="t")
    with db.transaction() as session:
        admin = session.get(Admin, ann.id)
        session.delete(admin)
    entry = entries("x.y")[0]
    assert (entry.actor_id, entry.actor_email) == (None, "ann@example.org")
