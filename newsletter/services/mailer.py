"""The SMTP transport: one reused connection per process, and precise outcomes.

The SMTP conversation is driven command by command (MAIL, RCPT, DATA) rather than through
`smtplib.sendmail`, so that every failure is known to have happened either before the server
could have accepted the message (safe to retry) or while waiting for its reply to the final
dot (the server may have accepted it: `SendError.ambiguous`).
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import time
from collections.abc import Iterable
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr

from newsletter.config import Settings

log = logging.getLogger(__name__)

# A connection unused for longer than this is checked with NOOP before it is trusted again;
# servers commonly drop idle clients after 60-300 s.
IDLE_CHECK_SECONDS = 20.0
_LEADING_DOT = re.compile(rb"(?m)^\.")


class SendError(Exception):
    """A message was not (or not certainly) accepted.

    `permanent`: retrying cannot help (5xx). `ambiguous`: the connection failed after the whole
    message was sent, so the server may have accepted it.
    """

    def __init__(
        self, message: str, *, permanent: bool, code: int | None = None, ambiguous: bool = False
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code
        self.ambiguous = ambiguous


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _refusal(stage: str, code: int, reply: bytes) -> SendError:
    return SendError(f"{stage} refused: {code} {_text(reply)}", permanent=code >= 500, code=code)


class SmtpTransport:
    """Sends messages over SMTP, keeping the connection open between messages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: smtplib.SMTP | None = None
        self._last_used = 0.0
        self.sent = 0
        self.connects = 0

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context()
        conn: smtplib.SMTP
        if s.smtp_security == "tls":
            conn = smtplib.SMTP_SSL(
                s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=context
            )
        else:
            conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            if s.smtp_security == "starttls":
                conn.starttls(context=context)
        conn.ehlo_or_helo_if_needed()
        if s.smtp_username:
            conn.login(s.smtp_username, s.smtp_password)
        self.connects += 1
        return conn

    def _connection(self) -> smtplib.SMTP:
        if self._conn is not None:
            if time.monotonic() - self._last_used < IDLE_CHECK_SECONDS:
                return self._conn
            try:
                if self._conn.noop()[0] == 250:
                    return self._conn
            except (smtplib.SMTPException, OSError):
                pass
            self.close()
        self._conn = self._connect()
        return self._conn

    def send(self, message: EmailMessage) -> None:
        """Send an EmailMessage to its To addresses (see `send_data`)."""
        sender = parseaddr(str(message["From"]))[1]
        recipients = [addr for _, addr in getaddresses([str(v) for v in message.get_all("To", [])])]
        payload = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        self.send_data(sender, recipients, payload)

    def send_data(self, sender: str, recipients: Iterable[str], payload: bytes) -> None:
        """Send ready message bytes; raise SendError unless every recipient accepted them."""
        try:
            self._transmit(sender, list(recipients), payload, fresh_retry=True)
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise SendError(f"{type(exc).__name__}: {exc}", permanent=False) from None
        self._last_used = time.monotonic()
        self.sent += 1

    def _transmit(
        self, sender: str, recipients: list[str], payload: bytes, *, fresh_retry: bool
    ) -> None:
        conn = self._connection()
        try:
            code, reply = self._command(conn, "mail", f"FROM:<{sender}>")
        except (smtplib.SMTPServerDisconnected, OSError):
            # The server dropped a reused connection before MAIL: nothing was sent, so a fresh
            # connection may try once more at once.
            self.close()
            if not fresh_retry:
                raise
            self._transmit(sender, recipients, payload, fresh_retry=False)
            return
        if code != 250:
            self._reset(conn, code)
            raise _refusal("sender", code, reply)
        for rcpt in recipients:
            code, reply = self._command(conn, "rcpt", f"TO:<{rcpt}>")
            if code not in (250, 251):
                # One refused recipient fails the message: a partial acceptance is no success.
                self._reset(conn, code)
                raise _refusal(f"recipient {rcpt}", code, reply)
        conn.putcmd("data")
        code, reply = conn.getreply()
        if code != 354:
            self._reset(conn, code)
            raise _refusal("DATA", code, reply)
        body = payload
        if payload.startswith(b".") or b"\n." in payload:  # the search is far cheaper than re
            body = _LEADING_DOT.sub(b"..", payload)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        conn.send(body + b".\r\n")
        try:
            code, reply = conn.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise SendError(
                f"no reply after the message was sent ({type(exc).__name__}: {exc}); "
                "the server may have accepted it",
                permanent=False,
                ambiguous=True,
            ) from None
        if code != 250:
            raise _refusal("message", code, reply)

    @staticmethod
    def _command(conn: smtplib.SMTP, verb: str, argument: str) -> tuple[int, bytes]:
        # smtplib's mail() and rcpt() re-parse each address with email.utils (about 0.2 ms a
        # message); the addresses here were checked when the message was built.
        if any(c in argument for c in "\r\n"):
            raise SendError(f"{verb} address contains a line break", permanent=True)
        conn.putcmd(verb, argument)
        return conn.getreply()

    def _reset(self, conn: smtplib.SMTP, code: int) -> None:
        # After a refusal the session is still good for the next message, unless the server
        # is closing it (421).
        if code == 421:
            self.close()
            return
        try:
            conn.rset()
        except (smtplib.SMTPException, OSError):
            self.close()

    def close(self) -> None:
        """Close the connection if one is open."""
        if self._conn is None:
            return
        try:
            self._conn.quit()
        except (smtplib.SMTPException, OSError):
            self._conn.close()
        self._conn = None
