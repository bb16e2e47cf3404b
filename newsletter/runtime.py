"""The per-process services an app carries: settings, tokens, composer, SMTP transport."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from flask import current_app

from newsletter.config import Settings
from newsletter.services.compose import Composer
from newsletter.services.mailer import SmtpTransport
from newsletter.services.tokens import Tokens


@dataclass
class Runtime:
    """Everything a view or task needs besides the database session."""

    settings: Settings
    tokens: Tokens
    composer: Composer
    _transport: SmtpTransport | None = field(default=None, repr=False)
    _transport_pid: int = field(default=0, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Wire the runtime for one set of settings (no I/O)."""
        tokens = Tokens(settings.secret_key, settings.confirm_max_age_seconds)
        return cls(settings=settings, tokens=tokens, composer=Composer(settings, tokens))

    def transport(self) -> SmtpTransport:
        """This process's SMTP transport; a forked worker child opens its own connection."""
        if self._transport is None or self._transport_pid != os.getpid():
            self._transport = SmtpTransport(self.settings)
            self._transport_pid = os.getpid()
        return self._transport


def runtime() -> Runtime:
    """The Runtime of the current Flask app."""
    value = current_app.extensions["newsletter"]
    assert isinstance(value, Runtime)
    return value
