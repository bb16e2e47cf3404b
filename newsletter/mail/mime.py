"""Writes a mail as wire bytes: headers, a multipart/alternative body, quoted-printable parts.

A drip run sends the same rendered step to many people, and building each copy with the
`email` package costs about 1.7 ms (header objects, policy folding, generator). The
structure of our mails is fixed (text and HTML alternatives, a handful of headers), so it is
written here directly: header values are checked and RFC 2047-encoded by `email.header`, the
bodies are quoted-printable encoded by `binascii` (C), and the result parses cleanly under
`email.policy.strict` (the tests check that against the `email` package).
"""

from __future__ import annotations

import binascii
import secrets
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr
from functools import lru_cache

MAX_HEADER_LENGTH = 998
# RFC 5322 recommends 78; encoded words are folded there, plain values are left on one line up
# to the hard limit because folding a URL leaves whitespace some receivers keep.
FOLD_AT = 78
CRLF = "\r\n"


class HeaderError(ValueError):
    """A header value would break the message (CR/LF, or longer than RFC 5322 allows)."""


def checked_header(name: str, value: str) -> str:
    """Return `value` if it is safe as a header value; otherwise raise HeaderError."""
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderError(f"{name} header contains a line break")
    if len(name) + 2 + len(value) > MAX_HEADER_LENGTH:
        raise HeaderError(f"{name} header is longer than {MAX_HEADER_LENGTH} characters")
    return value


@lru_cache(maxsize=4096)
def encode_value(name: str, value: str) -> str:
    """A checked header value, RFC 2047-encoded (and folded) when it is not plain ASCII."""
    checked_header(name, value)
    if value.isascii():
        return value
    header = Header(value, "utf-8", maxlinelen=FOLD_AT, header_name=name)
    return header.encode(linesep=CRLF)


def encode_address(name: str, display: str, address: str) -> str:
    """A `Display Name <address>` header value, the name quoted or encoded as needed."""
    checked_header(name, display)
    checked_header(name, address)
    if not address.isascii():
        # An internationalised address needs SMTPUTF8 end to end; refuse rather than mangle.
        raise HeaderError(f"{name} address {address!r} is not ASCII")
    return formataddr((display, address), charset="utf-8") if display else address


def quoted_printable(text: str) -> bytes:
    """`text` as a quoted-printable body with CRLF line ends, ending in a line break."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n")
    if not lines.endswith("\n"):
        lines += "\n"
    return binascii.b2a_qp(lines.replace("\n", CRLF).encode("utf-8"), istext=True)


def new_boundary() -> str:
    """A multipart boundary. '=_' never occurs in quoted-printable text, so it cannot clash."""
    return f"=_nl_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Outgoing:
    """A mail ready for the SMTP conversation: envelope and data."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    message_id: str


def assemble(headers: list[tuple[str, str]], text: str, html: str, boundary: str) -> bytes:
    """The whole message: `headers` (already encoded values), then both alternatives.

    The plain text part comes first, so that a client that shows the last part it
    understands shows the HTML.
    """
    head = "".join(f"{name}: {value}{CRLF}" for name, value in headers)
    head += (
        f"MIME-Version: 1.0{CRLF}"
        f'Content-Type: multipart/alternative; boundary="{boundary}"{CRLF}{CRLF}'
    )
    part_head = (
        "--{b}"
        + CRLF
        + 'Content-Type: text/{kind}; charset="utf-8"'
        + CRLF
        + "Content-Transfer-Encoding: quoted-printable"
        + CRLF
        + CRLF
    )
    return b"".join(
        (
            head.encode("ascii"),
            part_head.format(b=boundary, kind="plain").encode("ascii"),
            quoted_printable(text),
            CRLF.encode("ascii"),
            part_head.format(b=boundary, kind="html").encode("ascii"),
            quoted_printable(html),
            f"{CRLF}--{boundary}--{CRLF}".encode("ascii"),
        )
    )
