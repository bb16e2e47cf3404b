"""Setting up and turning off one's own second factor (TOTP), with a QR code drawn here.

The QR code is an SVG made server-side by segno and put inline: no script, no request to
anyone else. The secret is shown as text too, for apps that take it typed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import segno
from flask import flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup
from sqlalchemy.orm import Session

from newsletter import clock
from newsletter.admins import second_factor
from newsletter.admins.accounts import AccountError
from newsletter.db import db
from newsletter.models import Admin
from newsletter.web.admin import bp
from newsletter.web.admin.access import current_admin, editor_required
from newsletter.web.admin.forms import ButtonForm, CodeForm

QR_TITLE = "QR code of your second-factor secret"


def qr_svg(uri: str) -> Markup:
    """The QR code of `uri` as inline SVG (segno writes only path data and our title)."""
    svg = segno.make(uri, error="m").svg_inline(scale=5, title=QR_TITLE, svgclass="qr-code")
    return Markup(svg)


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _page(admin: Admin, form: CodeForm | None = None, status: int = 200) -> ResponseReturnValue:
    pending = admin.totp_pending_secret
    context: dict[str, object] = {
        "admin": admin,
        "form": form or CodeForm(),
        "start_form": ButtonForm(),
    }
    if pending is not None and admin.totp_secret is None:
        context["qr"] = qr_svg(second_factor.provisioning_uri(admin, pending))
        context["secret"] = _grouped(pending)
    return render_template("admin/second_factor.html", **context), status


def _mine() -> Admin:
    with db.session() as tx:
        admin = tx.get(Admin, current_admin().id)
    assert admin is not None
    return admin


@bp.get("/second-factor")
@editor_required
def second_factor_page() -> ResponseReturnValue:
    """Whether this account has a second factor, and the way to set one up or turn it off."""
    return _page(_mine())


@bp.post("/second-factor/start")
@editor_required
def second_factor_start() -> ResponseReturnValue:
    """Make a new secret and show its QR code."""
    if ButtonForm().validate_on_submit():
        with db.transaction() as tx:
            admin = tx.get(Admin, current_admin().id)
            if admin is not None and admin.totp_secret is None:
                second_factor.start_enrolment(tx, admin)
    return redirect(url_for("admin.second_factor_page"), code=303)


def _with_code(
    change: Callable[[Session, Admin, str, datetime], None], done: str
) -> ResponseReturnValue:
    """Run `change` on the signed-in admin with the code the form carries; the page again,
    with the refusal beside the code, when it is refused."""
    form = CodeForm()
    if form.validate_on_submit():
        try:
            with db.transaction() as tx:
                admin = tx.get(Admin, current_admin().id)
                assert admin is not None
                change(tx, admin, form.code.data or "", clock.now())
        except AccountError as exc:
            form.code.errors.append(str(exc))
        else:
            flash(done, "info")
            return redirect(url_for("admin.second_factor_page"), code=303)
    return _page(_mine(), form, 400)


@bp.post("/second-factor/confirm")
@editor_required
def second_factor_confirm() -> ResponseReturnValue:
    """Turn the second factor on with a first code from the app."""
    return _with_code(
        second_factor.confirm_enrolment,
        "Your second factor is on: signing in now asks for a code.",
    )


@bp.post("/second-factor/off")
@editor_required
def second_factor_off() -> ResponseReturnValue:
    """Turn one's own second factor off, with a current code."""
    return _with_code(second_factor.turn_off, "Your second factor is off.")
