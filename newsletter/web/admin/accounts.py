"""The accounts page (owners only): list, add with a role, change a role, deactivate and
reactivate, reset a password or a second factor. The last active owner stays an owner.

A new account, and a reset password, get a one-time password shown once on the answer page
(never kept in a cookie or the log); its holder chooses their own at the first sign-in.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import abort, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.admins import accounts, second_factor
from newsletter.db import db
from newsletter.models import Admin
from newsletter.web.admin import bp
from newsletter.web.admin.access import current_admin, owner_required
from newsletter.web.admin.forms import AddAccountForm, ButtonForm, RoleForm


def _page(
    add_form: AddAccountForm | None = None,
    *,
    handed_over: tuple[str, str] | None = None,
    row_errors: dict[int, str] | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    with db.session() as tx:
        rows = accounts.listing(tx)
    page = render_template(
        "admin/accounts.html",
        rows=rows,
        add_form=add_form or AddAccountForm(formdata=None),
        role_forms={row.id: RoleForm(formdata=None, role=row.role.value) for row in rows},
        button=ButtonForm(),
        handed_over=handed_over,
        row_errors=row_errors or {},
        me=current_admin(),
    )
    return page, status


@bp.get("/accounts", endpoint="accounts")
@owner_required
def accounts_page() -> ResponseReturnValue:
    """Every account, with its role, state, second factor and last sign-in."""
    return _page()


@bp.post("/accounts")
@owner_required
def add_account() -> ResponseReturnValue:
    """Add an account with a one-time password, shown once on the answer."""
    form = AddAccountForm()
    if not form.validate_on_submit():
        return _page(form, status=400)
    password = accounts.generate_password()
    try:
        with db.transaction() as tx:
            admin = accounts.create(
                tx,
                form.email.data or "",
                password,
                form.role.data or "",
                clock.now(),
                actor=_me(tx),
                one_time=True,
            )
    except accounts.AccountError as exc:
        getattr(form, exc.field or "email").errors.append(str(exc))
        return _page(form, status=400)
    return _page(handed_over=(admin.email, password))


def _me(tx: Session) -> Admin:
    me = tx.get(Admin, current_admin().id)
    assert me is not None
    return me


def _change(account_id: int, change: Callable[[Session, Admin, Admin], str]) -> ResponseReturnValue:
    """Apply `change(tx, actor, account)` to one account; its message is flashed."""
    if not ButtonForm().validate_on_submit():
        abort(400)
    try:
        with db.transaction() as tx:
            account = tx.get(Admin, account_id)
            if account is None:
                abort(404)
            message = change(tx, _me(tx), account)
    except accounts.AccountError as exc:
        return _page(row_errors={account_id: str(exc)}, status=400)
    flash(message, "info")
    return redirect(url_for("admin.accounts"), code=303)


@bp.post("/accounts/<int:account_id>/role")
@owner_required
def change_role(account_id: int) -> ResponseReturnValue:
    """Make an account an owner or an editor."""
    form = RoleForm()
    if not form.validate_on_submit():
        return _page(row_errors={account_id: "Choose owner or editor."}, status=400)

    def change(tx: Session, me: Admin, account: Admin) -> str:
        accounts.set_role(tx, me, account, form.role.data or "")
        return f"{account.email} is now an {account.role.value}."

    return _change(account_id, change)


@bp.post("/accounts/<int:account_id>/deactivate")
@owner_required
def deactivate(account_id: int) -> ResponseReturnValue:
    """Stop an account from signing in; its open sessions end."""

    def change(tx: Session, me: Admin, account: Admin) -> str:
        accounts.set_active(tx, me, account, False)
        return f"{account.email} can no longer sign in."

    return _change(account_id, change)


@bp.post("/accounts/<int:account_id>/reactivate")
@owner_required
def reactivate(account_id: int) -> ResponseReturnValue:
    """Let a deactivated account sign in again."""

    def change(tx: Session, me: Admin, account: Admin) -> str:
        accounts.set_active(tx, me, account, True)
        return f"{account.email} can sign in again."

    return _change(account_id, change)


@bp.post("/accounts/<int:account_id>/second-factor/reset")
@owner_required
def reset_second_factor(account_id: int) -> ResponseReturnValue:
    """Remove an account's second factor (a lost phone); they sign in with the password."""

    def change(tx: Session, me: Admin, account: Admin) -> str:
        second_factor.reset(tx, me, account)
        return f"{account.email} signs in with a password alone until they set up a new code."

    return _change(account_id, change)


@bp.post("/accounts/<int:account_id>/password/reset")
@owner_required
def reset_password(account_id: int) -> ResponseReturnValue:
    """Give an account a new one-time password, shown once."""
    if not ButtonForm().validate_on_submit():
        abort(400)
    with db.transaction() as tx:
        account = tx.get(Admin, account_id)
        if account is None:
            abort(404)
        password = accounts.reset_password(tx, _me(tx), account)
        email = account.email
    return _page(handed_over=(email, password))
