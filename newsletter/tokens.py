"""Signed, URL-safe tokens for confirm, unsubscribe, reader and preferences links.

Each purpose has its own salt, so a token made for one never opens another.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer


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
