"""When a step is due: day offsets, the send hour in the subscriber's zone, DST-correct."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

REAL_DAY = 86400.0
# A later part never follows the previous one by less than this share of a day, so a late
# part (after downtime) does not arrive together with the next.
MIN_GAP_DAYS = 0.5


def real_days(day_seconds: float) -> bool:
    """Whether a drip day is a calendar day: only then do send hours and windows apply."""
    return day_seconds == REAL_DAY


@lru_cache(maxsize=1)
def known_time_zones() -> frozenset[str]:
    """The IANA zone names this machine knows (from tzdata)."""
    return frozenset(available_timezones())


def valid_time_zone(name: str | None) -> str:
    """Return `name` if it is a known IANA zone, else "UTC"."""
    if name and name in known_time_zones():
        return name
    return "UTC"


def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for `name`, UTC when the name is unknown."""
    try:
        return ZoneInfo(valid_time_zone(name))
    except ZoneInfoNotFoundError:  # pragma: no cover - tzdata ships every listed zone
        return ZoneInfo("UTC")


@dataclass(frozen=True)
class SendWindow:
    """Local hours [start, end) on ISO weekdays (1 = Monday) in which a sequence sends."""

    start_hour: int = 9
    end_hour: int = 17
    weekdays: frozenset[int] = frozenset(range(1, 8))

    @classmethod
    def parse_days(cls, days: str) -> frozenset[int]:
        """ISO weekday digits such as "12345" (Monday to Friday) as a set."""
        found = frozenset(int(c) for c in days if c in "1234567")
        return found or frozenset(range(1, 8))

    def send_hour(self, preferred: int | None) -> int:
        """The local hour parts go at: the reader's preferred hour when it is inside the window,
        else the window's nearest edge (its opening hour, or its last whole hour); without a
        preference, the opening hour."""
        if preferred is None:
            return self.start_hour
        last = min(self.end_hour, 24) - 1
        return max(self.start_hour, min(preferred, last))

    def _bounds(
        self, day: date, tz: ZoneInfo, hour: int | None = None
    ) -> tuple[datetime, datetime]:
        begin = datetime.combine(day, time(self.send_hour(hour)), tzinfo=tz)
        if self.end_hour >= 24:
            end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
        else:
            end = datetime.combine(day, time(self.end_hour), tzinfo=tz)
        return begin.astimezone(UTC), end.astimezone(UTC)

    def contains(self, when: datetime, time_zone: str) -> bool:
        """Whether the UTC instant `when` falls inside the window in `time_zone`."""
        tz = zone(time_zone)
        local_day = when.astimezone(tz).date()
        if local_day.isoweekday() not in self.weekdays:
            return False
        begin, end = self._bounds(local_day, tz)
        return begin <= when < end

    def opening_on_or_after(self, day: date, time_zone: str, hour: int | None = None) -> datetime:
        """The UTC send time (see `send_hour`) of local `day` or the first allowed day after."""
        tz = zone(time_zone)
        for offset in range(8):
            candidate = day + timedelta(days=offset)
            if candidate.isoweekday() in self.weekdays:
                return self._bounds(candidate, tz, hour)[0]
        raise AssertionError("a window has at least one weekday")  # pragma: no cover

    def next_opening(self, after: datetime, time_zone: str, hour: int | None = None) -> datetime:
        """The first send time (see `send_hour`) strictly after `after`."""
        tz = zone(time_zone)
        local_day = after.astimezone(tz).date()
        opening = self.opening_on_or_after(local_day, time_zone, hour)
        if opening <= after:
            opening = self.opening_on_or_after(local_day + timedelta(days=1), time_zone, hour)
        return opening


def next_local_day(when: datetime, time_zone: str) -> datetime:
    """The UTC instant of the local midnight after `when` in `time_zone` (DST-correct)."""
    tz = zone(time_zone)
    day = when.astimezone(tz).date() + timedelta(days=1)
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def step_due_at(
    *,
    started_at: datetime,
    day_offset: int,
    time_zone: str,
    window: SendWindow,
    day_seconds: float,
    previous_sent_at: datetime | None = None,
    send_hour: int | None = None,
) -> datetime:
    """The UTC time a step with `day_offset` is due for an enrollment started at `started_at`.

    Day 0 goes at once. With real days, later steps go when the send window opens, in the
    subscriber's zone, on the subscriber's calendar day `started + day_offset` (or the next
    allowed weekday), at their preferred `send_hour` when they chose one (see
    `SendWindow.send_hour`); the arithmetic is on wall-clock dates, so a DST change moves the UTC
    instant, not the local hour. With a shortened day (demos, tests) offsets are plain
    multiples of `day_seconds` and windows do not apply.
    """
    if day_offset <= 0:
        due = started_at
    elif real_days(day_seconds):
        local_day = started_at.astimezone(zone(time_zone)).date() + timedelta(days=day_offset)
        due = window.opening_on_or_after(local_day, time_zone, send_hour)
    else:
        due = started_at + timedelta(seconds=day_offset * day_seconds)
    if previous_sent_at is not None:
        earliest = previous_sent_at + timedelta(seconds=MIN_GAP_DAYS * day_seconds)
        if earliest > due:
            due = earliest
            if real_days(day_seconds) and send_hour is not None:
                # At their hour, never sooner than the gap: the first send time from `earliest`.
                just_before = earliest - timedelta(microseconds=1)
                due = window.next_opening(just_before, time_zone, send_hour)
            elif real_days(day_seconds) and not window.contains(due, time_zone):
                due = window.next_opening(due, time_zone)
    return due
