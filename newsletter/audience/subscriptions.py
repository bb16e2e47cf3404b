"""The subscriber lifecycle: signup (double opt-in), confirm, unsubscribe.

No outcome is visible to the person signing up: new, pending, active and suppressed addresses
all get the same response from the web edge, so the form cannot be used to probe the list.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesParser

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.content.sequences import sequence_for
from newsletter.delivery import planning
from newsletter.mail import addresses
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    StopReason,
    Subscriber,
    SubscriberStatus,
    Suppression,
    address_hash,
)
from newsletter.schedule import valid_time_zone
from newsletter.tokens import TokenError, Tokens

log = logging.getLogger(__name__)

# A pending address asking again within this window gets no second confirmation mail, so the
# form cannot be used to flood someone's inbox.
CONFIRM_RESEND_INTERVAL = timedelta(minutes=5)
# And no address gets more than this many in a rolling day, whoever asks from wherever: the
# per-client rate limit cannot see an attacker who changes address (or forges X-Forwarded-For).
CONFIRMATIONS_PER_DAY = 3
CONFIRMATION_CAP_WINDOW = timedelta(days=1)
MID_SEND_POLL_SECONDS = 0.05


class SignupError(ValueError):
    """The signup input itself is invalid (shown to the person next to the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class SignupOutcome(enum.Enum):
    """What a signup did; for logs and tests, never shown to the person."""

    CREATED = "created"
    RESENT = "resent"
    IGNORED = "ignored"


@dataclass(frozen=True)
class SignupRequest:
    """What the signup form collected, plus the consent context of the request."""

    email: str
    first_name: str | None = None
    time_zone: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    form: str = "signup-page"
    sequence_slug: str | None = None


def normalise_email(raw: str) -> str:
    """The stored form of an address (see services.addresses), or SignupError."""
    try:
        return addresses.normalise(raw)
    except addresses.AddressError as exc:
        raise SignupError("email", str(exc)) from None


def clean_name(raw: str | None) -> str | None:
    """A first name fit to store (see mail.addresses.clean_name), or SignupError."""
    try:
        return addresses.clean_name(raw)
    except addresses.NameRefused as exc:
        raise SignupError("first_name", str(exc)) from None


def _recent_confirmations(
    session: Session, subscriber_id: int, now: datetime
) -> tuple[int, datetime | None]:
    """How many confirmation mails were queued for this subscriber in the cap window, and when
    the latest was."""
    count, latest = session.execute(
        select(func.count(Delivery.id), func.max(Delivery.created_at)).where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.kind == DeliveryKind.CONFIRM,
            Delivery.created_at > now - CONFIRMATION_CAP_WINDOW,
        )
    ).one()
    return int(count), latest


def _confirmation_allowed(
    session: Session, subscriber_id: int, now: datetime, *, min_interval: timedelta
) -> bool:
    count, latest = _recent_confirmations(session, subscriber_id, now)
    if count >= CONFIRMATIONS_PER_DAY:
        log.info("signup for subscriber %d ignored: daily confirmation cap reached", subscriber_id)
        return False
    return latest is None or now - latest >= min_interval


def signup(session: Session, request: SignupRequest, now: datetime) -> SignupOutcome:
    """Record a signup and queue the confirmation mail when one is due.

    Raises SignupError for bad input, before anything is written.
    """
    email = normalise_email(request.email)
    first_name = clean_name(request.first_name)
    time_zone = valid_time_zone(request.time_zone)
    sequence = sequence_for(session, request.sequence_slug)
    if sequence is None:
        raise SignupError("sequence", "There is no series to sign up for yet.")

    if session.scalar(select(Suppression.id).where(Suppression.email_hash == address_hash(email))):
        log.info("signup for suppressed address ignored")
        return SignupOutcome.IGNORED

    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == email))
    if subscriber is None:
        subscriber = Subscriber(email=email, status=SubscriberStatus.PENDING, created_at=now)
        session.add(subscriber)
        outcome = SignupOutcome.CREATED
    elif subscriber.status in (SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED):
        return SignupOutcome.IGNORED
    elif subscriber.status is SubscriberStatus.ACTIVE:
        # Already receiving mail: a second signup changes nothing (and says nothing).
        return SignupOutcome.IGNORED
    elif subscriber.status is SubscriberStatus.PENDING:
        if not _confirmation_allowed(
            session, subscriber.id, now, min_interval=CONFIRM_RESEND_INTERVAL
        ):
            return SignupOutcome.IGNORED
        outcome = SignupOutcome.RESENT
    else:  # unsubscribed: they may come back, through a fresh double opt-in
        if not _confirmation_allowed(session, subscriber.id, now, min_interval=timedelta(0)):
            return SignupOutcome.IGNORED
        subscriber.status = SubscriberStatus.PENDING
        outcome = SignupOutcome.RESENT

    subscriber.first_name = first_name or subscriber.first_name
    subscriber.time_zone = time_zone
    subscriber.consent_at = now
    subscriber.consent_ip = request.ip
    subscriber.consent_user_agent = (request.user_agent or "")[:512] or None
    subscriber.consent_form = request.form[:100]
    session.flush()

    enrollment = session.scalar(
        select(Enrollment).where(
            Enrollment.subscriber_id == subscriber.id, Enrollment.sequence_id == sequence.id
        )
    )
    if enrollment is None:
        session.add(
            Enrollment(subscriber_id=subscriber.id, sequence_id=sequence.id, created_at=now)
        )
    planning.add_delivery(session, DeliveryKind.CONFIRM, subscriber.id, now, now)
    session.add(
        Event(
            subscriber_id=subscriber.id,
            kind="signup",
            data={"form": subscriber.consent_form, "sequence": sequence.slug},
            created_at=now,
        )
    )
    return outcome


def resend_confirmation(session: Session, raw_email: str, now: datetime) -> SignupOutcome:
    """Queue the confirmation mail again for a pending address (the "send it again" form).

    Anything else (unknown, active, unsubscribed, suppressed) is ignored, and so is a pending
    address inside the resend interval or at its daily cap: the same caps as a signup, so the
    two forms together still send at most CONFIRMATIONS_PER_DAY mails. Raises SignupError for
    an address that does not parse, before anything is written.
    """
    email = normalise_email(raw_email)
    subscriber = session.scalar(
        select(Subscriber).where(Subscriber.email == email).with_for_update()
    )
    if subscriber is None or subscriber.status is not SubscriberStatus.PENDING:
        return SignupOutcome.IGNORED
    if session.scalar(select(Suppression.id).where(Suppression.email_hash == address_hash(email))):
        return SignupOutcome.IGNORED
    if not _confirmation_allowed(session, subscriber.id, now, min_interval=CONFIRM_RESEND_INTERVAL):
        return SignupOutcome.IGNORED
    planning.add_delivery(session, DeliveryKind.CONFIRM, subscriber.id, now, now)
    session.add(Event(subscriber_id=subscriber.id, kind="confirm-resend", created_at=now))
    return SignupOutcome.RESENT


def confirmable(session: Session, subscriber_id: int, email: str) -> bool:
    """Whether a confirm token still names someone who can confirm (read-only, for a GET)."""
    subscriber = session.get(Subscriber, subscriber_id)
    return (
        subscriber is not None
        and subscriber.email == email
        and subscriber.status in (SubscriberStatus.PENDING, SubscriberStatus.ACTIVE)
    )


def confirm(
    session: Session, subscriber_id: int, email: str, now: datetime, day_seconds: float
) -> Subscriber | None:
    """Activate a pending subscriber and start their pending enrollments.

    Confirming twice is harmless: an active subscriber is returned unchanged. Returns None when
    the token names nobody (deleted, or the address changed), or someone who has since left.
    """
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if subscriber is None or subscriber.email != email:
        return None
    if subscriber.status is SubscriberStatus.ACTIVE:
        return subscriber
    if subscriber.status is not SubscriberStatus.PENDING:
        return None
    subscriber.status = SubscriberStatus.ACTIVE
    subscriber.confirmed_at = now
    session.add(Event(subscriber_id=subscriber.id, kind="confirm", created_at=now))
    pending = session.scalars(
        select(Enrollment).where(
            Enrollment.subscriber_id == subscriber.id,
            Enrollment.status == EnrollmentStatus.PENDING,
        )
    )
    for enrollment in pending:
        planning.start_enrollment(session, enrollment, now, day_seconds)
    return subscriber


def unsubscribe(session: Session, subscriber_id: int, now: datetime, source: str) -> bool:
    """Unsubscribe and skip every delivery not yet sent. Returns False for an unknown id.

    Idempotent: a second call changes nothing. A delivery already claimed by a worker is
    skipped too; the worker re-checks the subscriber just before sending and drops it.
    """
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if subscriber is None:
        return False
    if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
        return True
    subscriber.status = SubscriberStatus.UNSUBSCRIBED
    subscriber.unsubscribed_at = now
    planning.stop_enrollments(session, subscriber_id, now, StopReason.UNSUBSCRIBED)
    planning.skip_open(session, subscriber_id, reason=f"unsubscribed ({source})")
    session.add(
        Event(
            subscriber_id=subscriber_id, kind="unsubscribe", data={"source": source}, created_at=now
        )
    )
    return True


# Why someone left, as the unsubscribed page offers it (the key is what is stored).
LEAVING_REASONS = {
    "too-many": "Too many mails",
    "not-relevant": "Not what I expected",
    "no-time": "No time to read them now",
    "never-signed-up": "I never signed up",
    "other": "Something else",
}
LEAVING_DETAIL_MAX = 500


def record_leaving_reason(
    session: Session, subscriber_id: int, reason: str, detail: str, now: datetime
) -> bool:
    """Keep why an unsubscribed person left (a reason of LEAVING_REASONS, and their own words
    as text); whether it was kept. Only someone who left may say, and a second answer
    replaces the first, so one person is one answer in the figures."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.status is not SubscriberStatus.UNSUBSCRIBED:
        return False
    if reason not in LEAVING_REASONS:
        raise ValueError(f"unknown reason {reason!r}")
    data = {"reason": reason, "detail": " ".join(detail.split())[:LEAVING_DETAIL_MAX]}
    earlier = session.scalars(
        select(Event).where(Event.subscriber_id == subscriber_id, Event.kind == "leaving_reason")
    ).first()
    if earlier is not None:
        earlier.data, earlier.created_at = data, now
    else:
        session.add(
            Event(subscriber_id=subscriber_id, kind="leaving_reason", data=data, created_at=now)
        )
    return True


class UnsubscribeError(ValueError):
    """An unsubscribe request that names nobody (no token, or a forged one)."""


_MAILTO_SUBJECT = re.compile(r"\bunsubscribe\s+(\S+)", re.IGNORECASE)


def mailto_unsubscribe_target(raw: bytes, tokens: Tokens) -> int:
    """The subscriber a mailto unsubscribe request names (the token in its Subject).

    Raises UnsubscribeError for a message without a valid token; a reply that quotes the subject
    ("Re: unsubscribe ...") still works.
    """
    message = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    subject = str(message.get("Subject", ""))
    match = _MAILTO_SUBJECT.search(subject)
    if match is None:
        raise UnsubscribeError("the message has no 'unsubscribe <token>' subject")
    try:
        return tokens.read_unsubscribe(match.group(1))
    except TokenError as exc:
        raise UnsubscribeError(str(exc)) from None


def mid_send(session: Session, subscriber_id: int, now: datetime, within: timedelta) -> bool:
    """Whether a worker is in the SMTP conversation of a mail to this subscriber right now.

    That is a delivery whose current claim has begun sending (attempted_at at or after
    claimed_at) and whose outcome is not recorded yet; an unsubscribe may have marked it
    skipped meanwhile. An attempt older than `within` is a worker that died mid-send.
    """
    found = session.scalar(
        select(Delivery.id)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.state.in_([DeliveryState.CLAIMED, DeliveryState.SKIPPED]),
            Delivery.sending_begun,
            Delivery.attempted_at > now - within,
        )
        .limit(1)
    )
    return found is not None


def wait_while_mid_send(
    sessions: Callable[[], Session],
    subscriber_id: int,
    clock: Callable[[], datetime],
    bound_seconds: float,
    *,
    stale_after_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """After an unsubscribe: wait (at most `bound_seconds`) for a mail already on the wire.

    The unsubscribe stops everything that has not begun; a mail whose SMTP conversation began
    before it cannot be called back. Waiting for its outcome means the person's "you are
    unsubscribed" page never comes before that last mail. An attempt that began more than
    `stale_after_seconds` (default: the bound) ago is a worker that died mid-send, not a mail
    on the wire. Returns False if the bound ran out.
    """
    deadline = time.monotonic() + bound_seconds
    within = timedelta(seconds=stale_after_seconds or bound_seconds)
    while True:
        with sessions() as session:
            if not mid_send(session, subscriber_id, clock(), within):
                return True
        if time.monotonic() >= deadline:
            log.warning(
                "unsubscribe of %d: a mail still in flight after %.0f s",
                subscriber_id,
                bound_seconds,
            )
            return False
        sleep(MID_SEND_POLL_SECONDS)
