"""What became of one delivery handed to the sender, and the timing rules of sending.

`Outcome` is counted by the batch and heard by flow control and the bounce breaker; `Policy`
is the day length, retry delays, give-up age and catch-up grace from the settings. Both live
here so that the sender, flow control and the breaker share them without importing each other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta

from newsletter.config import Settings
from newsletter.schedule import REAL_DAY


class Outcome(enum.Enum):
    """What happened to one delivery handed to the sender."""

    SENT = "sent"
    SKIPPED = "skipped"  # the subscriber left, or the row is no longer this batch's
    RESCHEDULED = "rescheduled"  # moved to the next send window
    RETRY = "retry"  # a transient failure: tried again later
    PAUSED = "paused"  # the relay refused us: back in the queue, sending pauses
    HELD = "held"  # sending stopped early (a pause, a hold, an expiring claim): back, unsent
    BOUNCED = "bounced"  # the recipient's mailbox was refused: failed, address suppressed
    REFUSED = "refused"  # this message was refused (policy, content): failed alone
    FAILED = "failed"  # given up, or the message could not be built
    NOT_CLAIMED = "not-claimed"


@dataclass(frozen=True)
class Policy:
    """The timing rules of sending, from the settings."""

    day_seconds: float = REAL_DAY
    retry_delays: tuple[int, ...] = (60, 300, 1800, 7200, 21600)
    give_up_after: timedelta = timedelta(days=3)
    catch_up_grace: timedelta = timedelta(hours=4)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy a deployment's settings describe."""
        return cls(
            day_seconds=settings.drip_day_seconds,
            retry_delays=settings.retry_schedule,
            give_up_after=timedelta(seconds=settings.retry_give_up_seconds),
            catch_up_grace=timedelta(seconds=settings.catch_up_grace_seconds),
        )

    def retry_delay(self, attempts: int) -> timedelta:
        """How long to wait before attempt number `attempts + 1` (the last delay repeats)."""
        index = min(max(attempts, 1), len(self.retry_delays)) - 1
        return timedelta(seconds=self.retry_delays[index])
