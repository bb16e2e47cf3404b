"""The SMTP transport: one reused connection per process, and precise outcomes.

The SMTP conversation is driven command by command (MAIL, RCPT, DATA) rather than through
`smtplib.sendmail`, so that every failure carries the stage it happened at (connect, EHLO,
STARTTLS, AUTH, MAIL FROM, RCPT TO, DATA, or the reply to the final dot) and whether the
server may already have the message (`SendError.ambiguous`). What a refusal means (the
relay's problem, the recipient's mailbox, this message) is judged from that by `verdicts`.
"""

from __future__ import annotations

import enum
import logging
import re
import smtplib
import ssl
import time
from collections.abc import Iterable
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Protocol

from newsletter.config import Settings

log = logging.getLogger(__name__)

# A connection unused for longer than this is checked with NOOP before it is trusted again;
# servers commonly drop idle clients after 60-300 s.
IDLE_CHECK_SECONDS = 20.0
_LEADING_DOT = re.compile(rb"(?m)^\.")
# RFC 3463 enhanced status code at the start of a reply: class.subject.detail.
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


class Stage(enum.StrEnum):
    """Where in the SMTP session a failure happened."""

    CONNECT = "connect"  # TCP, TLS handshake of implicit TLS, the greeting
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"  # MAIL FROM
    RCPT = "rcpt"  # RCPT TO
    DATA = "data"  # the reply to DATA, before the message is sent
    MESSAGE = "message"  # the reply to the final dot


class SendError(Exception):
    """A message was not (or not certainly) accepted, and where that happened.

    `code` and `reply` are the server's answer (None for a network failure). `ambiguous`: the
    connection failed after the whole message was sent, so the server may have accepted it.
    `local`: this message could not be put on the wire at all (not the server's answer).
    `setup`: the session could not be set up for a reason that retrying will not fix (a
    certificate that does not verify, STARTTLS or AUTH not offered): the configuration's or the
    relay's problem.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: Stage,
        code: int | None = None,
        reply: str = "",
        ambiguous: bool = False,
        local: bool = False,
        setup: bool = False,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.code = code
        self.reply = reply
        self.ambiguous = ambiguous
        self.local = local
        self.setup = setup

    @property
    def enhanced(self) -> str | None:
        """The reply's enhanced status code ("5.1.1"), if it has one."""
        match = _ENHANCED.match(self.reply)
        return ".".join(match.groups()) if match else None


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _refusal(stage: Stage, code: int, reply: bytes | str, what: str = "") -> SendError:
    text = " ".join(_text(reply).split())[:500]
    label = what or stage.value
    return SendError(f"{label} refused: {code} {text}", stage=stage, code=code, reply=text)


class Transport(Protocol):
    """What the sender needs of a mail transport: one message's bytes out, or a SendError."""

    def send_data(self, sender: str, recipients: Iterable[str], payload: bytes) -> None: ...

    def close(self) -> None: ...


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
        stage = Stage.CONNECT
        conn: smtplib.SMTP | None = None
        try:
            if s.smtp_security == "tls":
                conn = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=context
                )
            else:
                conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            stage = Stage.HELO
            conn.ehlo_or_helo_if_needed()
            if s.smtp_security == "starttls":
                stage = Stage.STARTTLS
                conn.starttls(context=context)
                stage = Stage.HELO
                conn.ehlo_or_helo_if_needed()
            if s.smtp_username:
                stage = Stage.AUTH
                conn.login(s.smtp_username, s.smtp_password)
        except smtplib.SMTPResponseException as exc:
            _discard(conn)
            raise _refusal(stage, exc.smtp_code, exc.smtp_error) from None
        except (ssl.SSLCertVerificationError, smtplib.SMTPNotSupportedError) as exc:
            # Retrying cannot help: the relay's certificate or its extensions do not match
            # what the settings ask for.
            _discard(conn)
            raise SendError(f"{stage} failed: {exc}", stage=stage, setup=True) from None
        except (smtplib.SMTPException, OSError) as exc:
            _discard(conn)
            raise SendError(f"{stage} failed: {type(exc).__name__}: {exc}", stage=stage) from None
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
        self._transmit(sender, list(recipients), payload, fresh_retry=True)
        self._last_used = time.monotonic()
        self.sent += 1

    def _transmit(
        self, sender: str, recipients: list[str], payload: bytes, *, fresh_retry: bool
    ) -> None:
        conn = self._connection()
        stage = Stage.MAIL
        try:
            try:
                code, reply = self._command(conn, "mail", f"FROM:<{sender}>", stage)
            except (smtplib.SMTPServerDisconnected, OSError):
                # The server dropped a reused connection before MAIL: nothing was sent, so a
                # fresh connection may try once more at once.
                self.close()
                if not fresh_retry:
                    raise
                self._transmit(sender, recipients, payload, fresh_retry=False)
                return
            if code != 250:
                self._reset(conn, code)
                raise _refusal(stage, code, reply, "MAIL FROM")
            stage = Stage.RCPT
            for rcpt in recipients:
                code, reply = self._command(conn, "rcpt", f"TO:<{rcpt}>", stage)
                if code not in (250, 251):
                    # One refused recipient fails the message: a partial acceptance is no
                    # success.
                    self._reset(conn, code)
                    raise _refusal(stage, code, reply, f"recipient {rcpt}")
            stage = Stage.DATA
            conn.putcmd("data")
            code, reply = conn.getreply()
            if code != 354:
                self._reset(conn, code)
                raise _refusal(stage, code, reply, "DATA")
            body = payload
            if payload.startswith(b".") or b"\n." in payload:  # the search is far cheaper than re
                body = _LEADING_DOT.sub(b"..", payload)
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            conn.send(body + b".\r\n")
            stage = Stage.MESSAGE
            try:
                code, reply = conn.getreply()
            except (smtplib.SMTPException, OSError) as exc:
                self.close()
                raise SendError(
                    f"no reply after the message was sent ({type(exc).__name__}: {exc}); "
                    "the server may have accepted it",
                    stage=stage,
                    ambiguous=True,
                ) from None
            if code != 250:
                raise _refusal(stage, code, reply, "message")
        except SendError:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise SendError(f"{stage}: {type(exc).__name__}: {exc}", stage=stage) from None
        except Exception as exc:  # noqa: BLE001 - one message's oddity must not end the batch
            # Something about this message (an address that cannot be encoded, say) that no
            # server answered; the session's state is unknown, so it is not reused.
            self.close()
            raise SendError(
                f"{stage}: {type(exc).__name__}: {exc}", stage=stage, local=True
            ) from None

    @staticmethod
    def _command(conn: smtplib.SMTP, verb: str, argument: str, stage: Stage) -> tuple[int, bytes]:
        # smtplib's mail() and rcpt() re-parse each address with email.utils (about 0.2 ms a
        # message); the addresses here were checked when the message was built.
        if any(c in argument for c in "\r\n"):
            raise SendError(f"{verb} address contains a line break", stage=stage, local=True)
        if not argument.isascii():
            # Without SMTPUTF8 an address must be ASCII (an international domain in its
            # xn-- form); refuse here rather than let the encoder fail mid-command.
            raise SendError(f"{verb} address is not ASCII: {argument!r}", stage=stage, local=True)
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


def _discard(conn: smtplib.SMTP | None) -> None:
    """Close a connection that failed while being set up, ignoring how it fails."""
    if conn is None:
        return
    try:
        conn.close()
    except (smtplib.SMTPException, OSError):
        pass
