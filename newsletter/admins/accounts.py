"""Admin accounts: create, authenticate (argon2, rehashed on sign-in), passwords, roles.

Every change is recorded in the audit log in the caller's transaction. Sign-in does the same
work whether or not the account exists (a password hash is verified either way), so neither
the answer nor its time tells which addresses have accounts.
"""

from __future__ import annotations

import secrets
import unicodedata
from datetime import datetime
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.admins import audit
from newsletter.models import Admin, AdminRole

MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 hashes any length; a bound keeps one request's work bounded
MAX_EMAIL = 320

hasher = PasswordHasher()


@cache
def _decoy_hash() -> str:
    # Verified when the address has no account, so that an unknown address costs the same
    # work. Made on first use: a hash takes tens of milliseconds, which no import should pay.
    return hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A refused account change; `field` names the form field the message belongs beside."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def normalise_email(value: str) -> str:
    """An admin's address in its one stored form (NFKC, lower case); AccountError if invalid."""
    text = unicodedata.normalize("NFKC", value).strip()
    if not text or len(text) > MAX_EMAIL:
        raise AccountError("Enter an email address.", "email")
    try:
        # Admins are never mailed: the address is a name, so no DNS look-up, and any domain.
        checked = validate_email(text, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise AccountError(f"That is not an email address: {exc}", "email") from None
    return checked.normalized.lower()


def check_password_rules(password: str, field: str = "password") -> None:
    """Refuse a password that is too short or too long."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"A password has at least {MIN_PASSWORD} characters.", field)
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"A password has at most {MAX_PASSWORD} characters.", field)


def generate_password() -> str:
    """A one-time password to hand over once (about 120 bits)."""
    return secrets.token_urlsafe(15)


def role_of(value: str) -> AdminRole:
    """The role named `value`; AccountError for anything else."""
    try:
        return AdminRole(value)
    except ValueError:
        raise AccountError("The role is owner or editor.", "role") from None


def find(session: Session, email: str) -> Admin | None:
    """The account with this address (any form of it), or None."""
    try:
        normalised = normalise_email(email)
    except AccountError:
        return None
    return session.scalar(select(Admin).where(Admin.email == normalised))


def create(
    session: Session,
    email: str,
    password: str,
    role: AdminRole | str,
    now: datetime,
    *,
    actor: Admin | None = None,
    one_time: bool = False,
) -> Admin:
    """Add an account; with `one_time` the password must be changed at the first sign-in."""
    address = normalise_email(email)
    chosen = role_of(role) if isinstance(role, str) else role
    check_password_rules(password)
    if session.scalar(select(Admin.id).where(Admin.email == address)) is not None:
        raise AccountError("An account with this address exists already.", "email")
    admin = Admin(
        email=address,
        password_hash=hasher.hash(password),
        role=chosen,
        active=True,
        must_change_password=one_time,
        session_epoch=0,
        created_at=now,
    )
    session.add(admin)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="admin.create",
        target=target_of(admin),
        after={"email": address, "role": chosen.value, "one_time_password": one_time},
    )
    return admin


def target_of(admin: Admin) -> str:
    """How the audit log names an account."""
    return f"admin:{admin.email}"


def any_admin(session: Session) -> bool:
    """True once at least one account exists."""
    return session.scalar(select(Admin.id).limit(1)) is not None


def _verify(password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def check_credentials(session: Session, email: str, password: str) -> Admin | None:
    """The active account whose password this is, or None; records a failed attempt.

    A good password on a hash made with older parameters is rehashed here, in the caller's
    transaction. An unknown address verifies a decoy hash: the same work as a known one.
    """
    admin = find(session, email)
    if len(password) > MAX_PASSWORD:
        password = password[:MAX_PASSWORD]
    good = _verify(admin.password_hash if admin is not None else _decoy_hash(), password)
    if admin is None or not good or not admin.active:
        reason = "unknown account" if admin is None else "inactive" if good else "wrong password"
        audit.record(
            session,
            actor=admin,
            action="admin.sign_in_failed",
            target=f"admin:{email.strip()[:MAX_EMAIL]}",
            after={"reason": reason},
        )
        return None
    if hasher.check_needs_rehash(admin.password_hash):
        admin.password_hash = hasher.hash(password)
    return admin


def signed_in(session: Session, admin: Admin, now: datetime, *, second_factor: bool) -> None:
    """Record a completed sign-in (after the second factor, when the account has one)."""
    admin.last_sign_in_at = now
    audit.record(
        session,
        actor=admin,
        action="admin.sign_in",
        target=target_of(admin),
        after={"second_factor": second_factor},
    )


def signed_out(session: Session, admin: Admin, *, idle: bool = False) -> None:
    """Record a sign-out (by the person, or by the idle timeout)."""
    audit.record(
        session,
        actor=admin,
        action="admin.sign_out",
        target=target_of(admin),
        after={"idle": idle} if idle else None,
    )


def change_password(
    session: Session, admin: Admin, current: str | None, new: str, confirm: str
) -> None:
    """Set a new password; `current` must match unless the account holds a one-time password.

    Other sessions of the account end (the session epoch moves on).
    """
    if current is not None and not _verify(admin.password_hash, current):
        raise AccountError("That is not your current password.", "current")
    check_password_rules(new, "new")
    if new != confirm:
        raise AccountError("The two new passwords differ.", "confirm")
    if current is not None and new == current:
        raise AccountError("Choose a password other than the current one.", "new")
    admin.password_hash = hasher.hash(new)
    was_one_time = admin.must_change_password
    admin.must_change_password = False
    admin.session_epoch += 1
    audit.record(
        session,
        actor=admin,
        action="admin.password_change",
        target=target_of(admin),
        before={"one_time_password": was_one_time} if was_one_time else None,
    )


def _active_owners(session: Session) -> int:
    query = select(func.count()).where(Admin.role == AdminRole.OWNER, Admin.active.is_(True))
    return session.scalar(query) or 0


def _keep_an_owner(session: Session, admin: Admin) -> None:
    if admin.role == AdminRole.OWNER and admin.active and _active_owners(session) <= 1:
        raise AccountError("This is the last owner: make another account an owner first.", "role")


def set_role(session: Session, actor: Admin, admin: Admin, role: AdminRole | str) -> None:
    """Give `admin` a role; the last active owner cannot be demoted."""
    chosen = role_of(role) if isinstance(role, str) else role
    if chosen == admin.role:
        return
    if chosen != AdminRole.OWNER:
        _keep_an_owner(session, admin)
    before = admin.role.value
    admin.role = chosen
    admin.session_epoch += 1
    audit.record(
        session,
        actor=actor,
        action="admin.role_change",
        target=target_of(admin),
        before={"role": before},
        after={"role": chosen.value},
    )


def set_active(session: Session, actor: Admin, admin: Admin, active: bool) -> None:
    """Deactivate (their sessions end at once) or reactivate an account; never the last owner."""
    if admin.active == active:
        return
    if not active:
        _keep_an_owner(session, admin)
    admin.active = active
    admin.session_epoch += 1
    audit.record(
        session,
        actor=actor,
        action="admin.activate" if active else "admin.deactivate",
        target=target_of(admin),
        before={"active": not active},
        after={"active": active},
    )


def reset_password(session: Session, actor: Admin, admin: Admin) -> str:
    """Give `admin` a new one-time password (returned, to hand over); their sessions end."""
    password = generate_password()
    admin.password_hash = hasher.hash(password)
    admin.must_change_password = True
    admin.session_epoch += 1
    audit.record(session, actor=actor, action="admin.password_reset", target=target_of(admin))
    return password


def by_epoch_id(session: Session, user_id: str) -> Admin | None:
    """The active account a session's user id ("<id>.<epoch>") still stands for, or None."""
    number, _, epoch = user_id.partition(".")
    if not (number.isdigit() and epoch.isdigit()):
        return None
    admin = session.get(Admin, int(number))
    if admin is None or not admin.active or admin.session_epoch != int(epoch):
        return None
    return admin


def listing(session: Session) -> list[Admin]:
    """Every account: owners first, then by address."""
    return list(session.scalars(select(Admin).order_by(Admin.role.desc(), Admin.email)))
