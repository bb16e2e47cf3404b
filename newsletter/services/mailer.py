"""The SMTP transport: one reused connection per process, outcomes mapped to two errors."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage

from newsletter.config import Settings

log = logging.getLogger(__name__)


class SendError(Exception):
    """A message was not accepted; `permanent` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


def _decode(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


class SmtpTransport:
    """Sends messages over SMTP, keeping the connection open between messages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: smtplib.SMTP | None = None

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
        if s.smtp_username:
            conn.login(s.smtp_username, s.smtp_password)
        return conn

    def _connection(self) -> smtplib.SMTP:
        if self._conn is not None:
            try:
                if self._conn.noop()[0] == 250:
                    return self._conn
            except (smtplib.SMTPException, OSError):
                pass
            self.close()
        self._conn = self._connect()
        return self._conn

    def send(self, message: EmailMessage) -> None:
        """Send one message; raise SendError unless every recipient was accepted."""
        try:
            refused = self._connection().send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(f"{code} {_decode(msg)}" for code, msg in exc.recipients.values())
            permanent = all(code >= 500 for code in codes)
            raise SendError(
                f"recipient refused: {detail}", permanent=permanent, code=codes[0]
            ) from None
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise SendError(
                f"{exc.smtp_code} {_decode(exc.smtp_error)}",
                permanent=exc.smtp_code >= 500,
                code=exc.smtp_code,
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise SendError(f"{type(exc).__name__}: {exc}", permanent=False) from None
        if refused:
            # A partial refusal is not a success: with one recipient per message any refusal
            # means the message did not reach its person.
            detail = "; ".join(f"{code} {_decode(msg)}" for code, msg in refused.values())
            code = next(iter(refused.values()))[0]
            raise SendError(f"recipient refused: {detail}", permanent=code >= 500, code=code)

    def close(self) -> None:
        """Close the connection if one is open."""
        if self._conn is None:
            return
        try:
            self._conn.quit()
        except (smtplib.SMTPException, OSError):
            pass
        self._conn = None
