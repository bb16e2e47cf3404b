"""Signed, URL-safe tokens for confirm, unsubscribe, archive, preferences and tracked links.

Each purpose has its own salt, so a token made for one never opens another.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from itsdangerous import (
    BadSignature,
    SignatureExpired,
    Signer,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)


class TokenError(ValueError):
    """A token is forged, malformed or expired."""


@dataclass(frozen=True)
class Tokens:
    """Makes and checks the tokens of one deployment (one SECRET_KEY)."""

    secret_key: str
    confirm_max_age: int

    # Built once: an unsubscribe link is signed for every mail sent.
    @cached_property
    def _confirm(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.secret_key, salt="confirm-subscription")

    @cached_property
    def _reader(self) -> URLSafeSerializer:
        return URLSafeSerializer(self.secret_key, salt="reader")

    @cached_property
    def _preferences(self) -> URLSafeSerializer:
        return URLSafeSerializer(self.secret_key, salt="preferences")

    @cached_property
    def _unsubscribe(self) -> URLSafeSerializer:
        return URLSafeSerializer(self.secret_key, salt="unsubscribe")

    # Tracked mails sign a token per link: a bare Signer over "delivery.index" (no JSON, no
    # base64 of it) keeps that cheap; their own salts make no other token valid here.
    @cached_property
    def _click(self) -> Signer:
        return Signer(self.secret_key, salt="click")

    @cached_property
    def _open(self) -> Signer:
        return Signer(self.secret_key, salt="open")

    def confirm_token(self, subscriber_id: int, email: str) -> str:
        """A token that confirms this address for this subscriber; it expires."""
        return self._confirm.dumps([subscriber_id, email])

    def read_confirm(self, token: str) -> tuple[int, str]:
        """The (subscriber id, email) a confirm token was made for."""
        try:
            sid, email = self._confirm.loads(token, max_age=self.confirm_max_age)
        except SignatureExpired:
            raise TokenError("this confirmation link has expired") from None
        except (BadSignature, ValueError, TypeError):
            raise TokenError("this confirmation link is not valid") from None
        if not isinstance(sid, int) or not isinstance(email, str):
            raise TokenError("this confirmation link is not valid")
        return sid, email

    def unsubscribe_token(self, subscriber_id: int) -> str:
        """A token that unsubscribes this subscriber; it never expires (old mail keeps working)."""
        return self._unsubscribe.dumps(subscriber_id)

    def read_unsubscribe(self, token: str) -> int:
        """The subscriber id an unsubscribe token was made for."""
        try:
            sid = self._unsubscribe.loads(token)
        except (BadSignature, ValueError, TypeError):
            raise TokenError("this unsubscribe link is not valid") from None
        if not isinstance(sid, int):
            raise TokenError("this unsubscribe link is not valid")
        return sid

    def reader_token(self, subscriber_id: int) -> str:
        """A token that opens this subscriber's archive of received parts; it never expires."""
        return self._reader.dumps(subscriber_id)

    def read_reader(self, token: str) -> int:
        """The subscriber id a reader token was made for."""
        try:
            sid = self._reader.loads(token)
        except (BadSignature, ValueError, TypeError):
            raise TokenError("this link is not valid") from None
        if not isinstance(sid, int):
            raise TokenError("this link is not valid")
        return sid

    def preferences_token(self, subscriber_id: int) -> str:
        """A token that opens this subscriber's preferences page; it never expires."""
        return self._preferences.dumps(subscriber_id)

    def read_preferences(self, token: str) -> int:
        """The subscriber id a preferences token was made for."""
        try:
            sid = self._preferences.loads(token)
        except (BadSignature, ValueError, TypeError):
            raise TokenError("this preferences link is not valid") from None
        if not isinstance(sid, int) or isinstance(sid, bool):
            raise TokenError("this preferences link is not valid")
        return sid

    def click_token(self, delivery_id: int, link: int) -> str:
        """A token naming one link (its index in the step) of one delivery; it never expires."""
        return self._click.sign(f"{delivery_id}.{link}").decode()

    def read_click(self, token: str) -> tuple[int, int]:
        """The (delivery id, link index) a click token was made for."""
        try:
            delivery_id, link = self._click.unsign(token).decode().split(".")
            return _number(delivery_id), _number(link)
        except (BadSignature, ValueError):
            raise TokenError("this link is not valid") from None

    def open_token(self, delivery_id: int) -> str:
        """A token naming one delivery, for its open image; it never expires."""
        return self._open.sign(str(delivery_id)).decode()

    def read_open(self, token: str) -> int:
        """The delivery id an open token was made for."""
        try:
            return _number(self._open.unsign(token).decode())
        except (BadSignature, ValueError):
            raise TokenError("this image is not valid") from None


def _number(digits: str) -> int:
    """A non-negative integer written in ASCII digits only (int() also takes "+1", " 1", "١")."""
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(digits)
    return int(digits)
