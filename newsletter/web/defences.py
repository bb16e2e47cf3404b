"""Defences of the public forms against scripts: rate limits per client and per address, a
honeypot field, and a minimum fill time signed into the form.

The honeypot and the fill time reject silently: the sender gets the answer a person gets, so
a script learns nothing to adapt to, and nothing is stored or sent.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar, cast

from flask import current_app, request
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

from newsletter.extensions import limiter
from newsletter.mail import addresses
from newsletter.runtime import runtime

HONEYPOT_FIELD = "homepage"
STAMP_FIELD = "stamp"
# A form older than this is still accepted (a tab left open), but its stamp must be ours.
STAMP_MAX_AGE_SECONDS = 7 * 86400
_STAMP_SALT = "newsletter.form-stamp"

F = TypeVar("F", bound=Callable[..., object])
LimitValue = str | Callable[[], str]


def typed_address() -> str:
    """The `email` field of the posted form, normalised when it parses (else as typed).

    Keyed by the address as typed, known or not, so the limit says nothing about the list.
    """
    raw = request.form.get("email", "")[:320].strip()
    try:
        return addresses.normalise(raw)
    except addresses.AddressError:
        return raw.lower()


def limit_per_ip_and_address(
    per_ip: LimitValue,
    per_address: LimitValue,
    *,
    scope: str,
    address: Callable[[], str] = typed_address,
) -> Callable[[F], F]:
    """Rate limit a view per client address and per email address (or other personal key).

    `per_ip` and `per_address` are Flask-Limiter limit strings ("5 per minute; 20 per hour"), or
    functions returning one (read at request time, e.g. from settings). Views sharing a `scope`
    share their counters: the signup page and the embedded form draw on one budget. `address`
    returns the personal key of the request (default: the posted `email` field). Going over
    raises Flask-Limiter's RateLimitExceeded (a 429; the public pages render it as a page).
    """
    by_ip = limiter.shared_limit(per_ip, scope=f"{scope}:ip")
    by_address = limiter.shared_limit(
        per_address, scope=f"{scope}:address", key_func=lambda: f"address:{address()}"
    )

    def decorate(view: F) -> F:
        return cast(F, by_ip(by_address(view)))

    return decorate


def _signups_per_ip() -> str:
    return runtime().settings.signup_rate_limit


def _signups_per_address() -> str:
    return runtime().settings.signup_rate_limit_per_address


def limit_signups(view: F) -> F:
    """SIGNUP_RATE_LIMIT per client and SIGNUP_RATE_LIMIT_PER_ADDRESS per address, on one budget
    shared by the signup page, the embedded form and the "send it again" form."""
    return limit_per_ip_and_address(_signups_per_ip, _signups_per_address, scope="signup")(view)


def _signer() -> TimestampSigner:
    return TimestampSigner(current_app.config["SECRET_KEY"], salt=_STAMP_SALT)


def new_stamp() -> str:
    """The signed moment a form was handed out, for its hidden `stamp` field."""
    return _signer().sign(b"form").decode()


def looks_automated(min_fill_seconds: float) -> bool:
    """Whether a posted form was sent by a script: its honeypot filled, or (with a minimum fill
    time) its stamp missing, forged, or younger than `min_fill_seconds`."""
    posted = request.form
    if posted.get(HONEYPOT_FIELD, ""):
        return True
    if min_fill_seconds <= 0:
        return False
    stamp = posted.get(STAMP_FIELD, "")
    try:
        _, signed_at = _signer().unsign(stamp, max_age=STAMP_MAX_AGE_SECONDS, return_timestamp=True)
    except (SignatureExpired, BadSignature):
        return True
    # The signer's own clock (time.time, whole seconds), not the app's shifted one.
    return (datetime.now(UTC) - signed_at).total_seconds() < min_fill_seconds


def wants_json() -> bool:
    """Whether the request came from the embedded form's script (it asks for JSON)."""
    return request.accept_mimetypes.best == "application/json"
