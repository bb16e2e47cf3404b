"""The web admin: one blueprint under /admin, a module per page.

Each page module does `from newsletter.web.admin import bp` and is imported at the bottom of
this file. Every view is wrapped in `access.editor_required` or `access.owner_required`.
Templates live in newsletter/web/templates/admin/ and extend `admin/base.html`.
"""

from __future__ import annotations

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

from newsletter.admins import audit as audit_log

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="../templates")

# The navigation, in order: (endpoint, label, owners only). A page shows once its module
# has registered the endpoint, so pages can land in any order.
NAVIGATION = (
    ("admin.dashboard", "Dashboard", False),
    ("admin.sequences", "Sequences", False),
    ("admin.subscribers", "Subscribers", False),
    ("admin.imports", "Imports", False),
    ("admin.audit", "Audit log", False),
    ("admin.accounts", "Accounts", True),
)

_ORIGIN = "admin_audit_origin"


@bp.before_request
def _remember_origin() -> ResponseReturnValue | None:
    # Every audit entry this request records carries the client's address.
    request.environ[_ORIGIN] = audit_log.set_origin(request.remote_addr)
    return None


@bp.teardown_request
def _forget_origin(_error: BaseException | None) -> None:
    token = request.environ.pop(_ORIGIN, None)
    if token is not None:
        audit_log.reset_origin(token)


def navigation(is_owner: bool) -> list[tuple[str, str]]:
    """The (endpoint, label) pairs the navigation shows to this admin."""
    return [
        (endpoint, label)
        for endpoint, label, owners_only in NAVIGATION
        if endpoint in current_app.view_functions and (is_owner or not owners_only)
    ]


from newsletter.web.admin import (  # noqa: E402,F401
    access,
    accounts,
    article_import,
    audit,
    auth,
    figures,
    imports,
    second_factor,
    sequence_editor,
    sequences,
    subscribers,
)
