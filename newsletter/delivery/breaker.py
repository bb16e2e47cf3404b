"""The bounce breaker: when too many recent sends are refused, all sending holds.

A bad list import, or a relay that refuses every recipient, would otherwise bounce the list
address by address and suppress real people. Each worker process keeps the outcomes of its
last `window` sends; when more than `share` of that window was refused (bounced, refused as
a message, or refused by the relay), the process records a trip in the database and sending
holds everywhere until an operator resumes it (`flask --app web resume`). The trip lives in
the database, not only in Redis, so losing Redis does not lift it.
"""

from __future__ import annotations

from collections import Counter, deque
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.delivery.policy import Outcome
from newsletter.models import BreakerTrip

# What counts as a refused send; SENT is the other kind of entry, the rest are not sends.
REFUSALS = frozenset({Outcome.BOUNCED, Outcome.REFUSED, Outcome.PAUSED})


class BounceBreaker:
    """One process's window of recent send outcomes and the rule that trips it."""

    def __init__(self, window: int, share: float) -> None:
        self.window = window
        self.share = share
        self._recent: deque[tuple[datetime, Outcome]] = deque(maxlen=window)

    def record(self, outcome: Outcome, at: datetime) -> str | None:
        """Add one outcome; the reason to hold sending if the window now trips, else None."""
        if outcome is not Outcome.SENT and outcome not in REFUSALS:
            return None
        self._recent.append((at, outcome))
        return self.reason()

    def reason(self) -> str | None:
        """Why sending must hold, when more than `share` of the last `window` sends failed."""
        refused = Counter(o for _, o in self._recent if o in REFUSALS)
        total = sum(refused.values())
        if total <= self.share * self.window:
            return None
        kinds = ", ".join(f"{o.value} {n}" for o, n in sorted(refused.items(), key=str))
        return (
            f"{total} of the last {len(self._recent)} sends were refused ({kinds}); more than "
            f"{self.share:.0%} of {self.window} means a bad list or a relay refusing everyone"
        )

    def forget_until(self, moment: datetime | None) -> None:
        """Drop outcomes from before `moment` (an operator resumed sending then)."""
        while moment is not None and self._recent and self._recent[0][0] <= moment:
            self._recent.popleft()

    def clear(self) -> None:
        """Start a new window (after this process tripped)."""
        self._recent.clear()


def active_trip(session: Session) -> BreakerTrip | None:
    """The trip holding sending right now, if any."""
    return session.scalars(
        select(BreakerTrip).where(BreakerTrip.resumed_at.is_(None)).order_by(BreakerTrip.id)
    ).first()


def last_resume(session: Session) -> datetime | None:
    """When an operator last resumed sending after a trip."""
    return session.scalar(
        select(BreakerTrip.resumed_at)
        .where(BreakerTrip.resumed_at.is_not(None))
        .order_by(BreakerTrip.resumed_at.desc())
        .limit(1)
    )


def hold(session: Session, reason: str, now: datetime) -> bool:
    """Record a trip unless one already holds sending; whether this one is new."""
    if active_trip(session) is not None:
        return False
    session.add(BreakerTrip(reason=reason[:2000], tripped_at=now))
    session.flush()
    return True


def resume(session: Session, now: datetime) -> BreakerTrip | None:
    """End the trip holding sending (an operator's decision); the trip, or None if none."""
    trip = active_trip(session)
    if trip is not None:
        trip.resumed_at = now
    return trip
