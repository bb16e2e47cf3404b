"""Signing in and out, the first page, and changing one's own password.

Sign-in is rate limited per client address and per account (only failed attempts count), and
answers an unknown address, a wrong password and a deactivated account with the same words
after the same work (accounts.check_credentials).
"""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_limiter import RateLimitExceeded
from werkzeug.wrappers import Response

from newsletter import clock
from newsletter.admins import accounts
from newsletter.db import db
from newsletter.extensions import limiter
from newsletter.models import Admin
from newsletter.web.admin import bp
from newsletter.web.admin.access import (
    begin_session,
    current_admin,
    editor_required,
    end_session,
    safe_next,
)
from newsletter.web.admin.forms import ButtonForm, ChangePasswordForm, SignInForm

# Failed attempts only (a successful sign-in answers with a redirect).
SIGN_IN_LIMIT_PER_ADDRESS = "20 per minute; 100 per hour"
SIGN_IN_LIMIT_PER_ACCOUNT = "5 per minute; 20 per hour"
NO_MATCH = "That email address and password do not match an active account."


def _failed(response: Response) -> bool:
    return response.status_code != 303


def _account_key() -> str:
    # Keyed by the address as typed (normalised), known or not, so the limit itself does not
    # tell which addresses have accounts.
    typed = request.form.get("email", "")[: accounts.MAX_EMAIL].strip().lower()
    return f"admin-sign-in:{typed}"


def _landing(admin: Admin) -> Response:
    if admin.must_change_password:
        return redirect(url_for("admin.change_password"), code=303)
    target = safe_next(request.args.get("next")) or url_for("admin.index")
    return redirect(target, code=303)


@bp.get("/sign-in")
def sign_in_page() -> str:
    """The sign-in form."""
    return render_template("admin/sign_in.html", form=SignInForm())


@bp.post("/sign-in")
@limiter.limit(SIGN_IN_LIMIT_PER_ADDRESS, deduct_when=_failed)
@limiter.limit(SIGN_IN_LIMIT_PER_ACCOUNT, key_func=_account_key, deduct_when=_failed)
def sign_in() -> ResponseReturnValue:
    """Check the password; sign in, or ask for the second factor when the account has one."""
    form = SignInForm()
    if not form.validate_on_submit():
        return render_template("admin/sign_in.html", form=form), 400
    now = clock.now()
    with db.transaction() as session:
        admin = accounts.check_credentials(session, form.email.data or "", form.password.data or "")
        if admin is not None:
            accounts.signed_in(session, admin, now, second_factor=False)
    if admin is None:
        form.form_errors.append(NO_MATCH)
        return render_template("admin/sign_in.html", form=form), 401
    begin_session(admin)
    return _landing(admin)


@bp.errorhandler(RateLimitExceeded)
def too_many_attempts(error: RateLimitExceeded) -> tuple[str, int]:
    """Too many failed sign-ins from this address or for this account."""
    page = render_template(
        "admin/sign_in.html",
        form=SignInForm(),
        refused=(
            "Too many failed attempts to sign in. Wait a few minutes and try again "
            f"(limit: {error.description})."
        ),
    )
    return page, 429


@bp.post("/sign-out")
@editor_required
def sign_out() -> ResponseReturnValue:
    """End this browser's session."""
    admin = current_admin()
    if ButtonForm().validate_on_submit():
        with db.transaction() as session:
            attached = session.get(Admin, admin.id)
            if attached is not None:
                accounts.signed_out(session, attached)
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
            with db.transaction() as session:
                attached = session.get(Admin, admin.id)
                assert attached is not None
                one_time = attached.must_change_password
                accounts.change_password(
                    session,
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
