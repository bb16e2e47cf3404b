"""The one clock every service reads, so tests and demos can move time explicitly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    """UTC wall clock with an adjustable offset (tests jump it forward)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        """The current time, timezone-aware in UTC."""
        return datetime.now(UTC) + self.offset


clock = Clock()


def now() -> datetime:
    """Shorthand for `clock.now()`."""
    return clock.now()
