"""When a step is due: day offsets, the send hour in the subscriber's zone, DST-correct."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

REAL_DAY = 86400.0
# A later part never follows the previous one by less than this share of a day, so a late
# part (after downtime) does not arrive together with the next.
MIN_GAP_DAYS = 0.5


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


def step_due_at(
    *,
    started_at: datetime,
    day_offset: int,
    time_zone: str,
    send_hour: int,
    day_seconds: float,
    previous_sent_at: datetime | None = None,
) -> datetime:
    """The UTC time a step with `day_offset` is due for an enrollment started at `started_at`.

    Day 0 goes at once. With real days, later steps go at `send_hour` local time on the
    subscriber's calendar day `started + day_offset` (wall-clock arithmetic, so DST changes
    move the UTC instant, not the local hour). With a shortened day (demos, tests) offsets are
    plain multiples of `day_seconds`.
    """
    if day_offset <= 0:
        due = started_at
    elif day_seconds == REAL_DAY:
        tz = zone(time_zone)
        local_day = started_at.astimezone(tz).date() + timedelta(days=day_offset)
        due = datetime.combine(local_day, time(hour=send_hour), tzinfo=tz).astimezone(UTC)
    else:
        due = started_at + timedelta(seconds=day_offset * day_seconds)
    if previous_sent_at is not None:
        due = max(due, previous_sent_at + timedelta(seconds=MIN_GAP_DAYS * day_seconds))
    return due
