"""What an SMTP failure means: judged by its stage and the server's answer, never by the 5 alone.

The replies are the shapes real relays give (Postfix, Exim, Microsoft 365, Gmail, SES).
"""

from __future__ import annotations

import pytest

from newsletter.delivery.verdicts import Verdict, judge
from newsletter.mail.transport import SendError, Stage, _refusal

RELAY, MAILBOX, MESSAGE, TRANSIENT = (
    Verdict.RELAY,
    Verdict.MAILBOX,
    Verdict.MESSAGE,
    Verdict.TRANSIENT,
)


@pytest.mark.parametrize(
    ("stage", "code", "reply", "verdict"),
    [
        # Refusals of the session or of our sender: the relay's or the configuration's problem.
        (Stage.CONNECT, 554, "5.7.1 Your IP is blocklisted", RELAY),
        (Stage.HELO, 501, "5.5.4 Invalid EHLO argument", RELAY),
        (Stage.STARTTLS, 554, "5.7.3 TLS not available", RELAY),
        (Stage.AUTH, 535, "5.7.8 Authentication credentials invalid", RELAY),
        (Stage.MAIL, 550, "5.7.1 Sender not allowed", RELAY),
        (Stage.MAIL, 530, "5.7.0 Authentication required", RELAY),
        (Stage.MAIL, 553, "5.1.8 Sender domain does not exist", RELAY),
        (Stage.MAIL, 550, "Not permitted", RELAY),
        # A 5.7.x about relaying or authentication, at any stage.
        (Stage.RCPT, 554, "5.7.1 <a@example.org>: Relay access denied", RELAY),
        (Stage.RCPT, 550, "Relaying denied", RELAY),
        (Stage.RCPT, 530, "5.7.0 Authentication required", RELAY),
        (Stage.RCPT, 550, "5.7.1 Client host rejected: cannot find your hostname", RELAY),
        (Stage.RCPT, 553, "5.1.8 <we@x.example>: Sender address rejected: Domain not found", RELAY),
        (Stage.MESSAGE, 550, "5.7.8 Authentication required for this sender", RELAY),
        # Answers about the recipient's mailbox: hard bounces.
        (
            Stage.RCPT,
            550,
            "5.1.1 <a@example.org>: Recipient address rejected: User unknown",
            MAILBOX,
        ),
        (Stage.RCPT, 550, "5.1.1 User unknown in relay recipient table", MAILBOX),
        (Stage.RCPT, 550, "5.1.10 RESOLVER.ADR.RecipientNotFound", MAILBOX),
        (Stage.RCPT, 550, "5.2.1 The email account that you tried to reach is disabled", MAILBOX),
        (Stage.RCPT, 550, "No such user here", MAILBOX),
        (Stage.RCPT, 551, "User not local", MAILBOX),
        (Stage.RCPT, 553, "Mailbox name not allowed", MAILBOX),
        (Stage.MESSAGE, 550, "5.1.1 Mailbox does not exist", MAILBOX),
        # Refusals of this one message (policy, content, size, a full mailbox): it fails alone.
        (Stage.RCPT, 552, "5.2.2 Mailbox full", MESSAGE),
        (Stage.RCPT, 554, "Recipient rejected by policy", MESSAGE),
        (Stage.RCPT, 550, "5.7.1 Recipient address rejected: Access denied", MESSAGE),
        (Stage.DATA, 554, "5.5.1 No valid recipients", MESSAGE),
        (Stage.MESSAGE, 554, "5.7.1 Message rejected as spam", MESSAGE),
        (Stage.MESSAGE, 552, "5.3.4 Message size exceeds fixed limit", MESSAGE),
        (Stage.MESSAGE, 550, "5.7.26 Unauthenticated email is not accepted (DMARC)", MESSAGE),
        # Anything 4xx is transient, whatever the stage.
        (Stage.MAIL, 451, "4.3.0 Try again later", TRANSIENT),
        (Stage.AUTH, 454, "4.7.0 Temporary authentication failure", TRANSIENT),
        (Stage.RCPT, 450, "4.2.1 Mailbox busy", TRANSIENT),
        (Stage.MESSAGE, 421, "4.3.2 Service shutting down", TRANSIENT),
    ],
)
def test_refusals_are_judged_by_stage_and_answer(
    stage: Stage, code: int, reply: str, verdict: Verdict
) -> None:
    assert judge(_refusal(stage, code, reply)) is verdict


def test_failures_without_an_answer() -> None:
    # No connection or no reply: try again later.
    assert judge(SendError("refused", stage=Stage.CONNECT)) is TRANSIENT
    assert judge(SendError("no reply", stage=Stage.MESSAGE, ambiguous=True)) is TRANSIENT
    # A certificate that does not verify, STARTTLS not offered: the configuration's problem.
    assert judge(SendError("bad certificate", stage=Stage.CONNECT, setup=True)) is RELAY
    # This message cannot be put on the wire (an address that is not ASCII): it fails alone.
    assert judge(SendError("not ASCII", stage=Stage.RCPT, local=True)) is MESSAGE


def test_enhanced_code_is_read_from_the_reply() -> None:
    assert _refusal(Stage.RCPT, 550, b"5.1.1 No such user").enhanced == "5.1.1"
    assert _refusal(Stage.RCPT, 550, "No such user").enhanced is None
    assert _refusal(Stage.RCPT, 550, "No such user 5.1.1").enhanced is None
