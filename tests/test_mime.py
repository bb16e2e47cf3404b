"""The wire format the sender writes, read back by Python's own `email` parser (strict)."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from newsletter.mail.mime import (
    HeaderError,
    assemble,
    encode_address,
    encode_value,
    new_boundary,
    quoted_printable,
)

TRICKY_TEXT = (
    "Line one with trailing spaces   \n"
    ".a line that starts with a dot\n"
    "From the start of a line\n"
    "equals = signs =3D and a tab\there\n"
    "Ünïcödé — “quotes” and emoji 🙂\n" + "a long line " * 40 + "\n\nlast line without newline"
)


def parse(data: bytes) -> EmailMessage:
    parsed = BytesParser(policy=policy.strict).parsebytes(data)
    assert isinstance(parsed, EmailMessage)
    return parsed


def content(part: EmailMessage | None) -> str:
    """A part's decoded text with the wire's CRLF line ends read as newlines."""
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def build(text: str = TRICKY_TEXT, html: str = "<p>Hi</p>", subject: str = "Hello") -> bytes:
    headers = [
        ("From", encode_address("From", "Ann Author", "ann@example.com")),
        ("To", encode_address("To", "Zoë O'Brien, Jr.", "zoe@example.org")),
        ("Subject", encode_value("Subject", subject)),
        ("Message-ID", "<1@example.com>"),
    ]
    return assemble(headers, text, html, new_boundary())


def test_parses_strictly_and_round_trips_both_parts() -> None:
    html = "<p>" + TRICKY_TEXT.replace("\n", "<br>\n") + "</p>"
    message = parse(build(html=html))
    assert message.get_content_type() == "multipart/alternative"
    assert not message.defects
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None and html_part is not None
    assert not text_part.defects and not html_part.defects
    assert text_part["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(text_part) == TRICKY_TEXT + "\n"  # a body always ends with a line break
    assert content(html_part) == html + "\n"


def test_every_line_is_short_and_ends_in_crlf() -> None:
    data = build()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    assert data.isascii()


def test_non_ascii_headers_are_encoded_and_decode_back() -> None:
    subject = "Wie geht’s — ein sehr langer Betreff, der gefaltet werden muss, weil er lang ist"
    message = parse(build(subject=subject))
    assert str(message["Subject"]) == subject
    assert message["To"].addresses[0].display_name == "Zoë O'Brien, Jr."
    assert message["To"].addresses[0].addr_spec == "zoe@example.org"


def test_boundary_cannot_occur_in_encoded_bodies() -> None:
    boundary = new_boundary()
    hostile = f"--{boundary}\n{boundary}--\n"
    data = assemble([("Subject", "x")], hostile, hostile, boundary)
    message = parse(data)
    parts = list(message.iter_parts())
    assert len(parts) == 2
    assert content(parts[0]) == hostile  # already ends with a line break


def test_same_content_as_the_email_package() -> None:
    reference = EmailMessage(policy=policy.SMTP)
    reference["Subject"] = "x"
    reference.set_content(TRICKY_TEXT, cte="quoted-printable")
    expected = BytesParser(policy=policy.default).parsebytes(reference.as_bytes())
    assert isinstance(expected, EmailMessage)
    assert content(parse(build()).get_body(("plain",))) == content(expected)
    assert quoted_printable("a\r\nb\rc").split(b"\r\n") == [b"a", b"b", b"c", b""]


@pytest.mark.parametrize(
    "value",
    ["Hello\r\nBcc: victim@example.org", "Hi\nthere", "nul\x00", "x" * 1000],
)
def test_bad_values_are_errors_not_headers(value: str) -> None:
    with pytest.raises(HeaderError):
        encode_value("Subject", value)
    with pytest.raises(HeaderError):
        encode_address("To", value, "a@example.org")


def test_internationalised_address_is_refused() -> None:
    with pytest.raises(HeaderError):
        encode_address("To", "", "zoë@example.org")
