"""What an SMTP failure means, judged by the stage it happened at and the server's answer.

Only an answer about the recipient's mailbox is a hard bounce that suppresses the address. A
refusal of the session or of our sender (connect, EHLO, STARTTLS, AUTH, MAIL FROM, or a 5.7.x
about relaying or authentication anywhere) is the relay's or the configuration's problem: it
pauses sending and blames nobody. A refusal of one message for its content or by a policy
fails that message alone. Everything else is transient and is retried.
"""

from __future__ import annotations

import enum
import re

from newsletter.mail.transport import SendError, Stage


class Verdict(enum.Enum):
    """What to do about one failed attempt."""

    TRANSIENT = "transient"  # try again later (4xx, no connection, no reply)
    RELAY = "relay"  # the relay refuses us: pause sending, suppress nobody
    MAILBOX = "mailbox"  # the recipient's mailbox does not exist or is disabled: hard bounce
    MESSAGE = "message"  # this message is refused (policy, content, size): it fails alone


# Stages before any recipient is named: a refusal there is about us, never the recipient.
_SESSION_STAGES = frozenset({Stage.CONNECT, Stage.HELO, Stage.STARTTLS, Stage.AUTH, Stage.MAIL})
# Reply codes of RFC 4954 (AUTH): authentication required, failed, encryption required.
_AUTH_CODES = frozenset({530, 534, 535, 538})
# Enhanced codes that are about authentication or the sender's credentials (RFC 4954, 7372).
_AUTH_ENHANCED = frozenset({"5.7.8", "5.7.9", "5.7.10", "5.7.11", "5.7.13", "5.7.14"})
# Words by which a refusal says it is about us, not the recipient: relaying denied,
# authentication, our sender address or our client host. Postfix checks the sender at RCPT
# ("550 5.1.8 <we@x>: Sender address rejected"), so these win over the code's class. "relay"
# alone is not enough: "User unknown in relay recipient table" is about the mailbox; and
# "unauthenticated" (a DMARC refusal of one receiver) is about the message, not our login.
_ABOUT_US = re.compile(
    r"relay(?:ing)?\s+(?:access\s+)?(?:denied|not\s+(?:permitted|allowed))"
    r"|unable\s+to\s+relay|do\s+not\s+relay|(?<!un)authenticat|\bauth\b|credential"
    r"|sender\s+address\s+rejected|client\s+host\s+rejected|not\s+(?:permitted|allowed)\s+to\s+send",
    re.IGNORECASE,
)
# Plain codes that mean "no such mailbox" at RCPT when a server gives no enhanced code.
_MAILBOX_CODES = frozenset({550, 551, 553})


def _names_mailbox(enhanced: str | None) -> bool:
    # X.1.x: addressing (bad mailbox, bad domain, moved); X.2.1: mailbox disabled.
    return enhanced is not None and (enhanced.startswith("5.1.") or enhanced == "5.2.1")


def judge(error: SendError) -> Verdict:
    """The verdict on one failed attempt."""
    if error.code is None:
        if error.local:
            return Verdict.MESSAGE
        return Verdict.RELAY if error.setup else Verdict.TRANSIENT
    if error.code < 500:
        return Verdict.TRANSIENT
    enhanced = error.enhanced
    if (
        error.stage in _SESSION_STAGES
        or error.code in _AUTH_CODES
        or enhanced in _AUTH_ENHANCED
        or _ABOUT_US.search(error.reply)
    ):
        return Verdict.RELAY
    if _names_mailbox(enhanced):
        return Verdict.MAILBOX
    if error.stage is Stage.RCPT and enhanced is None and error.code in _MAILBOX_CODES:
        return Verdict.MAILBOX
    return Verdict.MESSAGE
