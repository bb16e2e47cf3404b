"""Who may see an admin page: the session's admin, the role decorators, the idle timeout.

`editor_required` lets in any signed-in admin (editors and owners), `owner_required` only
owners; an editor asking for an owner page gets 403. A signed-in admin holding a one-time
password is sent to change it first. After ADMIN_IDLE_MINUTES without a request to an admin
page the session ends.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

from flask import abort, flash, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_user, logout_user
from werkzeug.wrappers import Response

from newsletter import clock
from newsletter.admins import accounts
from newsletter.db import db
from newsletter.extensions import login_manager
from newsletter.models import Admin
from newsletter.runtime import runtime
from newsletter.web.admin import bp, navigation

P = ParamSpec("P")
R = TypeVar("R")

# The session key holding the time (epoch seconds) of the admin's last request.
LAST_SEEN = "admin_seen"
CHANGE_PASSWORD = "admin.change_password"


@login_manager.user_loader
def _load_admin(user_id: str) -> Admin | None:
    with db.session() as session:
        return accounts.by_epoch_id(session, user_id)


def _to_sign_in() -> Response:
    return redirect(url_for("admin.sign_in_page", next=_here()))


login_manager.unauthorized_handler(_to_sign_in)


def _here() -> str | None:
    if request.method != "GET":
        return None
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


def safe_next(value: str | None) -> str | None:
    """`value` when it is a path inside the admin (never another site), else None."""
    if not value or "\\" in value or any(ord(c) < 32 for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin/"):
        return None
    return value


def current_admin() -> Admin:
    """The admin of this request (only inside a view wrapped by a role decorator)."""
    user = current_user._get_current_object()
    if not isinstance(user, Admin):
        abort(401)
    return user


def begin_session(admin: Admin) -> None:
    """Sign `admin` in on this browser: a fresh session, the idle clock started."""
    session.clear()
    login_user(admin)
    session[LAST_SEEN] = clock.now().timestamp()


def end_session() -> None:
    """Sign out on this browser."""
    logout_user()
    session.clear()


def _idle_limit_seconds() -> float:
    return runtime().settings.admin_idle_minutes * 60.0


def _gate(owners_only: bool) -> ResponseReturnValue | None:
    if not current_user.is_authenticated:
        return _to_sign_in()
    admin = current_admin()
    now = clock.now().timestamp()
    seen = session.get(LAST_SEEN)
    if not isinstance(seen, int | float) or now - seen > _idle_limit_seconds():
        with db.transaction() as db_session:
            attached = db_session.get(Admin, admin.id)
            if attached is not None:
                accounts.signed_out(db_session, attached, idle=True)
        end_session()
        minutes = runtime().settings.admin_idle_minutes
        flash(f"You were signed out after {minutes:g} minutes without activity.", "info")
        return redirect(url_for("admin.sign_in_page", next=_here()))
    session[LAST_SEEN] = now
    if admin.must_change_password and request.endpoint != CHANGE_PASSWORD:
        flash("Choose your own password before going on.", "info")
        return redirect(url_for(CHANGE_PASSWORD))
    if owners_only and not admin.is_owner:
        abort(403)
    return None


def _guarded(owners_only: bool) -> Callable[[Callable[P, R]], Callable[P, R | ResponseReturnValue]]:
    def decorate(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
        @wraps(view)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
            refused = _gate(owners_only)
            if refused is not None:
                return refused
            return view(*args, **kwargs)

        # Read by the tests that walk every admin URL (an editor gets 403 on owner pages).
        wrapped.admin_role = "owner" if owners_only else "editor"  # type: ignore[attr-defined]
        return wrapped

    return decorate


editor_required = _guarded(owners_only=False)
"""Any signed-in admin: editors and owners."""

owner_required = _guarded(owners_only=True)
"""Owners only; an editor gets 403."""


@bp.app_template_global()
def admin_time(value: datetime | None) -> str:
    """A stored time as the admin pages show it (UTC, to the second)."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.context_processor
def _admin_context() -> dict[str, object]:
    user = current_user._get_current_object() if current_user else None
    admin = user if isinstance(user, Admin) else None
    return {
        "signed_in_admin": admin,
        "admin_nav": navigation(admin.is_owner) if admin is not None else [],
    }
