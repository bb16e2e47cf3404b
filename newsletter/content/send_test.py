"""Test sends: the parts of a sequence built exactly as subscribers get them, to one address.

An author checks a course in a real inbox (layout, spam placement, DKIM) before anyone
signs up. A mail is composed by the same Composer as a real part, with "[Test]" before the
subject, and is not a delivery: it leaves no row and counts in no report. Its personal links
(view in browser, archive, unsubscribe) belong to no subscriber, so they find nothing rather
than someone else's data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content.preview import StepFields, field_errors
from newsletter.content.sequences import sequence_for
from newsletter.mail import addresses
from newsletter.mail.compose import Addressee, Composer
from newsletter.mail.mime import Outgoing
from newsletter.mail.transport import SmtpTransport
from newsletter.models import Sequence

SUBJECT_PREFIX = "[Test] "
# Subscriber ids start at 1, so tokens for 0 open nobody's archive or subscription.
NOBODY = 0


class TestSendError(ValueError):
    """The request names no sequence, no such part, or a bad address or name."""


@dataclass(frozen=True)
class TestMail:
    """One test mail: which part it is, its subject, and the bytes to send."""

    part: int
    subject: str
    mail: Outgoing


def _addressee(address: str, first_name: str | None) -> Addressee:
    try:
        email = addresses.normalise(address)
    except addresses.AddressError as exc:
        raise TestSendError(f"email: {exc}") from None
    try:
        name = addresses.clean_name(first_name)
    except addresses.NameRefused as exc:
        raise TestSendError(f"first_name: {exc}") from None
    return Addressee(NOBODY, email, name)


def build_step_test_mail(
    composer: Composer,
    address: str,
    sequence: Sequence,
    fields: StepFields,
    now: datetime,
    *,
    position: int,
    total: int,
    first_name: str | None = None,
) -> TestMail:
    """The test mail of one step as it stands in the editor (a draft's, not yet published).

    Raises TestSendError for a bad address or name, or a step with errors (content/preview.py).
    """
    addressee = _addressee(address, first_name)
    errors = field_errors(fields)
    if errors:
        field, messages = next(iter(errors.items()))
        raise TestSendError(f"part {position} cannot be built ({field}: {messages[0]})")
    mail = composer.part(
        addressee,
        fields.as_step(position),
        sequence,
        now,
        subject_prefix=SUBJECT_PREFIX,
        total=total,
        cache=False,
    )
    subject = SUBJECT_PREFIX + composer.personalise(fields.subject, addressee)
    return TestMail(position, subject, mail)


def build_test_mails(
    session: Session,
    composer: Composer,
    address: str,
    now: datetime,
    *,
    slug: str | None = None,
    part: int | None = None,
    first_name: str | None = None,
    confirmation: bool = False,
) -> list[TestMail]:
    """The test mails of a sequence's parts (all, or `part`), and its confirmation mail if asked.

    Raises TestSendError, before anything is built, for an unknown sequence or part, an invalid
    address, or a name the signup form would refuse.
    """
    addressee = _addressee(address, first_name)
    sequence = sequence_for(session, slug)
    if sequence is None:
        raise TestSendError(f"no sequence {slug!r}" if slug else "no sequence yet: run init")
    steps = list(sequence.steps)
    if part is not None and not 1 <= part <= len(steps):
        raise TestSendError(f"sequence {sequence.slug!r} has parts 1 to {len(steps)}, not {part}")
    mails: list[TestMail] = []
    if confirmation:
        rendered = composer.confirmation(addressee, sequence)
        marked = dataclasses.replace(rendered, subject=SUBJECT_PREFIX + rendered.subject)
        mails.append(TestMail(0, marked.subject, composer.wire(marked, addressee, now)))
    for step in steps:
        if part is None or step.position == part:
            mail = composer.part(addressee, step, sequence, now, subject_prefix=SUBJECT_PREFIX)
            subject = SUBJECT_PREFIX + composer.personalise(step.subject, addressee)
            mails.append(TestMail(step.position, subject, mail))
    return mails


def send_test_mails(settings: Settings, mails: list[TestMail]) -> None:
    """Send test mails now over one SMTP connection of their own, as the CLI does.

    Raises SendError (mail/transport.py) for the first mail the relay does not accept.
    """
    transport = SmtpTransport(settings)
    try:
        for test_mail in mails:
            mail = test_mail.mail
            transport.send_data(mail.sender, mail.recipients, mail.data)
    finally:
        transport.close()
