"""When something will happen, in the words a reader uses: "tomorrow at 09:00"."""

from __future__ import annotations

from datetime import datetime

from newsletter.schedule import real_days, zone


def _duration(seconds: float) -> str:
    if seconds < 90:
        count, unit = round(seconds), "second"
    elif seconds < 90 * 60:
        count, unit = round(seconds / 60), "minute"
    else:
        count, unit = round(seconds / 3600), "hour"
    return f"{count} {unit}{'' if count == 1 else 's'}"


def when(due: datetime, now: datetime, time_zone: str, day_seconds: float) -> str:
    """`due` as the reader in `time_zone` would say it, seen from `now`.

    With calendar days: "today at 09:00", "tomorrow at 09:00", "on Friday at 09:00" within a
    week, else "on Friday 11 December at 09:00", each followed by the zone ("(Europe/Berlin
    time)"): the reader's local time. With a shortened
    day (a demo, where a drip day lasts minutes) the words would be wrong, so it is a
    duration: "in about 2 minutes".
    """
    if not real_days(day_seconds):
        return f"in about {_duration(max(0.0, (due - now).total_seconds()))}"
    tz = zone(time_zone)
    local = due.astimezone(tz)
    hour = f"{local:%H:%M} ({time_zone} time)"
    days = (local.date() - now.astimezone(tz).date()).days
    if days <= 0:
        return f"today at {hour}"
    if days == 1:
        return f"tomorrow at {hour}"
    if days < 7:
        return f"on {local:%A} at {hour}"
    return f"on {local:%A} {local.day} {local:%B} at {hour}"
