"""Signing in and out, the first page, and changing one's own password.

Sign-in is rate limited per client address and per account (only failed attempts count), and
answers an unknown address, a wrong password and a deactivated account with the same words
after the same work (accounts.check_credentials).
"""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_limiter import RateLimitExceeded
from werkzeug.wrappers import Response

from newsletter import clock
from newsletter.admins import accounts, second_factor
from newsletter.db import db
from newsletter.extensions import limiter
from newsletter.models import Admin
from newsletter.runtime import runtime
from newsletter.web.admin import bp
from newsletter.web.admin.access import (
    begin_session,
    current_admin,
    editor_required,
    end_session,
    safe_next,
)
from newsletter.web.admin.forms import ButtonForm, ChangePasswordForm, CodeForm, SignInForm


# Failed attempts only count (a successful step answers with a redirect).
def _per_address() -> str:
    return runtime().settings.admin_sign_in_limit_per_address


def _per_account() -> str:
    return runtime().settings.admin_sign_in_limit_per_account


NO_MATCH = "That email address and password do not match an active account."


def _failed(response: Response) -> bool:
    return response.status_code != 303


def _account_key() -> str:
    # Keyed by the address as typed (normalised), known or not, so the limit itself does not
    # tell which addresses have accounts.
    typed = request.form.get("email", "")[: accounts.MAX_EMAIL].strip().lower()
    return f"admin-sign-in:{typed}"


# The browser's session key for an account whose password was right and whose code is due:
# {"id", "epoch", "at" (epoch seconds), "next"}. It signs nobody in.
PENDING = "admin_pending"
PENDING_SECONDS = 300


def _landing(admin: Admin, next_path: str | None) -> Response:
    if admin.must_change_password:
        return redirect(url_for("admin.change_password"), code=303)
    return redirect(safe_next(next_path) or url_for("admin.index"), code=303)


@bp.get("/sign-in")
def sign_in_page() -> str:
    """The sign-in form."""
    return render_template("admin/sign_in.html", form=SignInForm())


@bp.post("/sign-in")
@limiter.limit(_per_address, deduct_when=_failed)
@limiter.limit(_per_account, key_func=_account_key, deduct_when=_failed)
def sign_in() -> ResponseReturnValue:
    """Check the password; sign in, or ask for the second factor when the account has one."""
    form = SignInForm()
    if not form.validate_on_submit():
        return render_template("admin/sign_in.html", form=form), 400
    now = clock.now()
    with db.transaction() as tx:
        admin = accounts.check_credentials(tx, form.email.data or "", form.password.data or "")
        if admin is not None and admin.totp_secret is None:
            accounts.signed_in(tx, admin, now, second_factor=False)
    if admin is None:
        form.form_errors.append(NO_MATCH)
        return render_template("admin/sign_in.html", form=form), 401
    next_path = request.args.get("next")
    if admin.totp_secret is not None:
        session.clear()
        session[PENDING] = {
            "id": admin.id,
            "epoch": admin.session_epoch,
            "at": now.timestamp(),
            "next": safe_next(next_path),
        }
        return redirect(url_for("admin.sign_in_code_page"), code=303)
    begin_session(admin)
    return _landing(admin, next_path)


def _pending() -> dict[str, object] | None:
    value = session.get(PENDING)
    if not isinstance(value, dict):
        return None
    at = value.get("at")
    if not isinstance(at, int | float) or clock.now().timestamp() - at > PENDING_SECONDS:
        return None
    return value


def _pending_key() -> str:
    value = session.get(PENDING)
    account = value.get("id") if isinstance(value, dict) else None
    return f"admin-code:{account}"


@bp.get("/sign-in/code")
def sign_in_code_page() -> ResponseReturnValue:
    """The second step of signing in, for accounts with a second factor."""
    if _pending() is None:
        return redirect(url_for("admin.sign_in_page"))
    return render_template("admin/sign_in_code.html", form=CodeForm())


@bp.post("/sign-in/code")
@limiter.limit(_per_address, deduct_when=_failed)
@limiter.limit(_per_account, key_func=_pending_key, deduct_when=_failed)
def sign_in_code() -> ResponseReturnValue:
    """Check the code from the authenticator app and finish signing in."""
    pending = _pending()
    if pending is None:
        session.pop(PENDING, None)
        flash("That took too long: sign in again.", "info")
        return redirect(url_for("admin.sign_in_page"), code=303)
    form = CodeForm()
    if not form.validate_on_submit():
        return render_template("admin/sign_in_code.html", form=form), 400
    now = clock.now()
    with db.transaction() as tx:
        admin = accounts.by_epoch_id(tx, f"{pending['id']}.{pending['epoch']}")
        good = admin is not None and second_factor.check_code(tx, admin, form.code.data or "", now)
        if good and admin is not None:
            accounts.signed_in(tx, admin, now, second_factor=True)
    if not good or admin is None:
        form.code.errors.append(second_factor.WRONG_CODE)
        return render_template("admin/sign_in_code.html", form=form), 401
    next_path = pending.get("next")
    begin_session(admin)
    return _landing(admin, next_path if isinstance(next_path, str) else None)


@bp.errorhandler(RateLimitExceeded)
def too_many_attempts(error: RateLimitExceeded) -> tuple[str, int]:
    """Too many failed sign-ins (or codes) from this address or for this account."""
    refused = (
        "Too many failed attempts to sign in. Wait a few minutes and try again "
        f"(limit: {error.description})."
    )
    if request.endpoint == "admin.sign_in_code":
        page = render_template("admin/sign_in_code.html", form=CodeForm(), refused=refused)
    elif request.endpoint == "admin.sign_in":
        page = render_template("admin/sign_in.html", form=SignInForm(), refused=refused)
    else:
        page = render_template(
            "message.html",
            title="Too many requests",
            message="Too many requests. Wait a few minutes and try again.",
            show_signup=False,
        )
    return page, 429


@bp.post("/sign-out")
@editor_required
def sign_out() -> ResponseReturnValue:
    """End this browser's session."""
    admin = current_admin()
    if ButtonForm().validate_on_submit():
        with db.transaction() as tx:
            attached = tx.get(Admin, admin.id)
            if attached is not None:
                accounts.signed_out(tx, attached)
        end_session()
        flash("You are signed out.", "info")
    return redirect(url_for("admin.sign_in_page"), code=303)


@bp.get("/")
@editor_required
def index() -> ResponseReturnValue:
    """The dashboard when there is one; until then, a page that says who is signed in."""
    if "admin.dashboard" in current_app.view_functions:
        return redirect(url_for("admin.dashboard"))
    return render_template("admin/home.html")


@bp.route("/password", methods=["GET", "POST"])
@editor_required
def change_password() -> ResponseReturnValue:
    """Change one's own password (at the first sign-in, the one-time password)."""
    admin = current_admin()
    form = ChangePasswordForm()
    if form.validate_on_submit():
        try:
            with db.transaction() as tx:
                attached = tx.get(Admin, admin.id)
                assert attached is not None
                one_time = attached.must_change_password
                accounts.change_password(
                    tx,
                    attached,
                    None if one_time else (form.current.data or ""),
                    form.new.data or "",
                    form.confirm.data or "",
                )
        except accounts.AccountError as exc:
            getattr(form, exc.field or "new").errors.append(str(exc))
        else:
            # The epoch moved on, which ended every session of the account, this one too.
            begin_session(attached)
            flash("Your password is changed.", "info")
            return redirect(url_for("admin.index"), code=303)
        return render_template("admin/change_password.html", form=form), 400
    status = 400 if request.method == "POST" else 200
    return render_template("admin/change_password.html", form=form), status
