"""Who a mail goes to: a subscriber's address in one stored form, its wire form, their name.

Stored form: email-validator's normalized address (NFKC first, so fullwidth and other
compatibility variants collapse to the same characters), lower-cased, with the domain in
Unicode. So `ANN@Example.org`, `ａｎｎ＠ｅｘａｍｐｌｅ．ｏｒｇ` and `ann@example.org` are one
subscriber, and so are `a@bücher.de` and `a@xn--bcher-kva.de`.

This product never speaks SMTPUTF8: a local part must be ASCII (refused at signup otherwise),
and an internationalised domain goes on the wire in its IDNA (`xn--`) form.
"""

from __future__ import annotations

import unicodedata

import idna
from email_validator import EmailNotValidError, validate_email

from newsletter.mail.mime import HeaderError

# UTS #39 "highly restrictive": a label may mix scripts only in these combinations, the ones
# real writing systems use (Japanese, Chinese with Bopomofo, Korean, each with Latin).
_SCRIPT_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
# Unicode names whose first word is not the script's own name.
_SCRIPT_ALIASES = {"CJK": "HAN", "KATAKANA-HIRAGANA": "KATAKANA"}

LOCAL_PART_MESSAGE = (
    "Use an address whose part before the @ has only plain letters, digits and .-_+ "
    "(this list cannot deliver to addresses with other characters there)."
)
MIXED_SCRIPT_MESSAGE = (
    "The domain of this address mixes alphabets (for example Latin and Cyrillic letters "
    "that look alike); check it for look-alike characters."
)


# The width of the column a first name is stored in.
MAX_NAME_LENGTH = 100


class AddressError(ValueError):
    """An address that cannot be a subscriber's; the message is fit to show to the person."""


class NameRefused(ValueError):
    """A first name that cannot be stored; the message is fit to show to the person."""


def clean_name(raw: str | None) -> str | None:
    """A first name with its white space folded and no control characters, or None."""
    if raw is None:
        return None
    name = " ".join(raw.split())
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise NameRefused("The name contains characters that are not allowed.")
    if len(name) > MAX_NAME_LENGTH:
        raise NameRefused(f"Keep the name under {MAX_NAME_LENGTH} characters.")
    return name or None


def _script(char: str) -> str | None:
    """The script of a letter, from its Unicode name; None for digits, marks and the like."""
    if unicodedata.category(char) not in ("Lu", "Ll", "Lt", "Lo"):
        return None  # digits, hyphens, combining marks and modifier letters join any script
    word = unicodedata.name(char, "").split(" ", 1)[0]
    return _SCRIPT_ALIASES.get(word, word) or None


def mixes_scripts(label: str) -> bool:
    """Whether one domain label mixes scripts in a way no writing system does (a homoglyph)."""
    scripts = {s for s in map(_script, label) if s is not None}
    return len(scripts) > 1 and not any(scripts <= allowed for allowed in _SCRIPT_MIXES)


def normalise(raw: str) -> str:
    """The stored form of an address typed by a person, or AddressError saying what is wrong."""
    if any(c in raw for c in "\r\n\x00"):
        raise AddressError("Enter a valid email address.")
    # NFKC folds fullwidth and other compatibility forms before anything is compared.
    text = unicodedata.normalize("NFKC", raw).strip()
    local = text.rpartition("@")[0]
    if local and not local.isascii():
        raise AddressError(LOCAL_PART_MESSAGE)
    try:
        result = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise AddressError(f"Enter a valid email address: {exc}") from None
    if any(mixes_scripts(label) for label in result.domain.split(".")):
        raise AddressError(MIXED_SCRIPT_MESSAGE)
    return str(result.normalized).lower()


def wire_address(address: str) -> str:
    """The address as SMTP and the To header carry it: the domain in IDNA (xn--) form.

    ASCII addresses, nearly all of them, come back unchanged without an IDNA conversion.
    Raises HeaderError for an address that cannot be sent without SMTPUTF8 (a legacy row
    with a non-ASCII local part, or a domain IDNA refuses), so that mail fails alone.
    """
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        raise HeaderError(f"address {address!r} needs SMTPUTF8, which this sender does not use")
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise HeaderError(f"address {address!r} has a domain IDNA cannot encode: {exc}") from None
    return f"{local}@{ascii_domain}"
