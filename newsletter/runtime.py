"""The per-process services an app carries: settings, tokens, composer, transport, flow."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from flask import current_app

from newsletter import embedded
from newsletter.config import EMBEDDED, Settings
from newsletter.delivery.breaker import BounceBreaker
from newsletter.delivery.flow import FlowControl, store_for
from newsletter.delivery.policy import Policy
from newsletter.mail.compose import Composer
from newsletter.mail.deliverability import DeliverabilityCheck
from newsletter.mail.transport import SmtpTransport
from newsletter.tokens import Tokens


def shared_store_url(settings: Settings) -> str:
    """REDIS_URL with `embedded` turned into the embedded server's socket URL."""
    if settings.redis_url == EMBEDDED:
        return embedded.limiter_url(settings.instance_dir)
    return settings.redis_url


@dataclass
class Runtime:
    """Everything a view or task needs besides the database session."""

    settings: Settings
    tokens: Tokens
    composer: Composer
    policy: Policy
    # Built at first use (it reads the system's resolver configuration); a test may set its own.
    deliverability_check: DeliverabilityCheck | None = None
    _transport: SmtpTransport | None = field(default=None, repr=False)
    _flow: FlowControl | None = field(default=None, repr=False)
    _breaker: BounceBreaker | None = field(default=None, repr=False)
    _pid: int = field(default=0, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Wire the runtime for one set of settings (no I/O)."""
        tokens = Tokens(settings.secret_key, settings.confirm_max_age_seconds)
        return cls(
            settings=settings,
            tokens=tokens,
            composer=Composer(settings, tokens),
            policy=Policy.from_settings(settings),
        )

    def _fork_check(self) -> None:
        # A forked worker child must open its own SMTP and Redis connections.
        if self._pid != os.getpid():
            self._transport = None
            self._flow = None
            self._breaker = None
            self._pid = os.getpid()

    def transport(self) -> SmtpTransport:
        """This process's SMTP transport."""
        self._fork_check()
        if self._transport is None:
            self._transport = SmtpTransport(self.settings)
        return self._transport

    def flow(self) -> FlowControl:
        """This process's handle on the shared rate limit and error brake."""
        self._fork_check()
        if self._flow is None:
            s = self.settings
            self._flow = FlowControl(
                store_for(shared_store_url(s)),
                rate_per_second=s.send_rate_per_second,
                brake_after=s.brake_after_failures,
                max_pause=s.brake_max_pause_seconds,
            )
        return self._flow

    def deliverability(self) -> DeliverabilityCheck:
        """This process's domain check (CHECK_DELIVERABILITY) and its cache of answers."""
        if self.deliverability_check is None:
            self.deliverability_check = DeliverabilityCheck()
        return self.deliverability_check

    def breaker(self) -> BounceBreaker:
        """This process's bounce breaker: its window of recent send outcomes."""
        self._fork_check()
        if self._breaker is None:
            s = self.settings
            self._breaker = BounceBreaker(s.breaker_window, s.breaker_share)
        return self._breaker


def runtime() -> Runtime:
    """The Runtime of the current Flask app."""
    value = current_app.extensions["newsletter"]
    assert isinstance(value, Runtime)
    return value
