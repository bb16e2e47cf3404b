"""The optional second factor: TOTP codes (RFC 6238) from an authenticator app, via pyotp.

Enrolment keeps a pending secret until a code made from it confirms it. A code is accepted for
its own 30-second step and one step either side (clocks drift), and never twice: the last
accepted step is stored, and only a later one passes. Recovery is an owner resetting it.
"""

from __future__ import annotations

import hmac
from datetime import datetime

import pyotp
from sqlalchemy.orm import Session

from newsletter.admins import audit
from newsletter.admins.accounts import AccountError, target_of
from newsletter.models import Admin

ISSUER = "Newsletter admin"
DRIFT_STEPS = 1
WRONG_CODE = "That code is not right, or was used already. Enter the current code from your app."


def _clean(code: str) -> str:
    # Apps show the code in groups ("123 456"); people paste it with spaces.
    return "".join(code.split())


def _matching_step(secret: str, code: str, now: datetime, last_step: int | None) -> int | None:
    """The step whose code is `code`, later than `last_step`, near `now`; None if none."""
    code = _clean(code)
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def start_enrolment(session: Session, admin: Admin) -> str:
    """A new pending secret for `admin` (replacing any earlier pending one); returned."""
    secret = pyotp.random_base32()
    admin.totp_pending_secret = secret
    audit.record(session, actor=admin, action="admin.second_factor_start", target=target_of(admin))
    return secret


def provisioning_uri(admin: Admin, secret: str) -> str:
    """The otpauth:// address an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=admin.email, issuer_name=ISSUER)


def confirm_enrolment(session: Session, admin: Admin, code: str, now: datetime) -> None:
    """Turn the second factor on with a code from the pending secret; AccountError if wrong."""
    secret = admin.totp_pending_secret
    if secret is None:
        raise AccountError("Start again: there is no code to confirm.", "code")
    step = _matching_step(secret, code, now, None)
    if step is None:
        raise AccountError(WRONG_CODE, "code")
    admin.totp_secret = secret
    admin.totp_pending_secret = None
    admin.totp_last_step = step
    audit.record(
        session,
        actor=admin,
        action="admin.second_factor_on",
        target=target_of(admin),
        before={"second_factor": False},
        after={"second_factor": True},
    )


def check_code(session: Session, admin: Admin, code: str, now: datetime) -> bool:
    """True, and the code used up, when `code` is `admin`'s current one; a miss is recorded."""
    if admin.totp_secret is None:
        return False
    step = _matching_step(admin.totp_secret, code, now, admin.totp_last_step)
    if step is None:
        audit.record(
            session,
            actor=admin,
            action="admin.sign_in_failed",
            target=target_of(admin),
            after={"reason": "wrong code"},
        )
        return False
    admin.totp_last_step = step
    return True


def turn_off(session: Session, admin: Admin, code: str, now: datetime) -> None:
    """The account's own holder turns the second factor off, with a current code."""
    if admin.totp_secret is None:
        return
    step = _matching_step(admin.totp_secret, code, now, admin.totp_last_step)
    if step is None:
        raise AccountError(WRONG_CODE, "code")
    _clear(admin)
    audit.record(
        session,
        actor=admin,
        action="admin.second_factor_off",
        target=target_of(admin),
        before={"second_factor": True},
        after={"second_factor": False},
    )


def reset(session: Session, actor: Admin, admin: Admin) -> None:
    """An owner removes `admin`'s second factor (a lost phone); they sign in with a password."""
    if admin.totp_secret is None and admin.totp_pending_secret is None:
        return
    _clear(admin)
    admin.session_epoch += 1
    audit.record(
        session,
        actor=actor,
        action="admin.second_factor_reset",
        target=target_of(admin),
        before={"second_factor": True},
        after={"second_factor": False},
    )


def _clear(admin: Admin) -> None:
    admin.totp_secret = None
    admin.totp_pending_secret = None
    admin.totp_last_step = None
