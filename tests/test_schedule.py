"""Due times: day offsets, the local send hour, DST, shortened days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from newsletter.schedule import SendWindow, step_due_at, valid_time_zone

UTC = UTC


def due(started: datetime, offset: int, tz: str, **kw: object) -> datetime:
    params: dict[str, object] = {"window": SendWindow(9, 21), "day_seconds": 86400.0}
    params.update(kw)
    return step_due_at(started_at=started, day_offset=offset, time_zone=tz, **params)  # type: ignore[arg-type]


def test_part_one_is_due_at_once() -> None:
    started = datetime(2026, 3, 1, 21, 37, tzinfo=UTC)
    assert due(started, 0, "Asia/Tokyo") == started


def test_later_parts_at_send_hour_local_time() -> None:
    # 20:00 in Berlin on 1 June (CEST, UTC+2) -> day 1 is 2 June 09:00 local = 07:00 UTC.
    started = datetime(2026, 6, 1, 18, 0, tzinfo=UTC)
    assert due(started, 1, "Europe/Berlin") == datetime(2026, 6, 2, 7, 0, tzinfo=UTC)
    assert due(started, 3, "Europe/Berlin") == datetime(2026, 6, 4, 7, 0, tzinfo=UTC)


def test_local_calendar_day_not_utc_day() -> None:
    # 23:30 UTC on 1 June is already 2 June 08:30 in Tokyo: day 1 is 3 June 09:00 Tokyo.
    started = datetime(2026, 6, 1, 23, 30, tzinfo=UTC)
    assert due(started, 1, "Asia/Tokyo") == datetime(2026, 6, 3, 0, 0, tzinfo=UTC)


def test_send_hour_stays_local_across_dst_change() -> None:
    # New York springs forward on 8 March 2026: 09:00 EST is 14:00 UTC, 09:00 EDT is 13:00 UTC.
    started = datetime(2026, 3, 6, 15, 0, tzinfo=UTC)
    ny = ZoneInfo("America/New_York")
    for offset in range(0, 5):
        value = due(started, offset, "America/New_York")
        if offset:
            assert value.astimezone(ny).hour == 9, (offset, value)
    assert due(started, 1, "America/New_York") == datetime(2026, 3, 7, 14, 0, tzinfo=UTC)
    assert due(started, 3, "America/New_York") == datetime(2026, 3, 9, 13, 0, tzinfo=UTC)
    # And back in autumn (1 November 2026).
    autumn = datetime(2026, 10, 30, 15, 0, tzinfo=UTC)
    assert due(autumn, 3, "America/New_York") == datetime(2026, 11, 2, 14, 0, tzinfo=UTC)


def test_short_days_ignore_send_hour() -> None:
    started = datetime(2026, 6, 1, 18, 0, tzinfo=UTC)
    assert due(started, 2, "Europe/Berlin", day_seconds=5.0) == started + timedelta(seconds=10)


def test_late_previous_part_pushes_the_next_by_half_a_day() -> None:
    started = datetime(2026, 6, 1, 18, 0, tzinfo=UTC)
    # Part 2 went out at 16:00 UTC, hours after its 07:00 slot: part 3 keeps its own slot.
    late = datetime(2026, 6, 2, 16, 0, tzinfo=UTC)
    assert due(started, 2, "Europe/Berlin", previous_sent_at=late) == datetime(
        2026, 6, 3, 7, 0, tzinfo=UTC
    )
    # Part 2 went out at 23:00 UTC: part 3 waits at least half a day after it.
    later = datetime(2026, 6, 2, 23, 0, tzinfo=UTC)
    assert due(started, 2, "Europe/Berlin", previous_sent_at=later) == later + timedelta(hours=12)


def test_unknown_zone_is_utc() -> None:
    assert valid_time_zone("Europe/Atlantis") == "UTC"
    assert valid_time_zone(None) == "UTC"
    assert valid_time_zone("Pacific/Auckland") == "Pacific/Auckland"
