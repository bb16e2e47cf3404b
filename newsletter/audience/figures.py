"""The dashboard's figures and each sequence's funnel: counted exactly, kept for a short time.

Exact counts over a million subscribers and millions of deliveries take from a few hundred
milliseconds to seconds (listmonk's exact counts took tens of seconds at that size): too much
for every page view. So each set of figures is counted by one function, stored in
`cached_figures` with the moment it was counted, and served from there while it is younger
than its maximum age. The beat recounts the dashboard's every `REFRESH_SECONDS`
(`tasks.refresh_figures`), so that a reader rarely waits; a missing or stale one is counted by
the reader who finds it. A funnel is counted on demand, once: after that a stale funnel is
served as it is while a task counts it again in the background (`recount_funnel`, queued by
the page), so that nobody waits seconds for a count that was done before. Pages show how old
their figures are.

The dispatcher's heartbeat and the brake are read live, never cached: one row and one key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from newsletter.content.results import (
    PERIODS,
    PartResult,
    SequenceResults,
    sequence_results,
    since_of,
)
from newsletter.db import upsert
from newsletter.delivery.status import Health, health
from newsletter.models import (
    CachedFigures,
    Delivery,
    EnrollmentStatus,
    Sequence,
    Subscriber,
    SubscriberStatus,
    table_of,
)

# The dashboard's figures are served while younger than this; the beat recounts them twice
# as often, so that in a running deployment no reader ever counts them.
MAX_AGE = timedelta(seconds=60)
REFRESH_SECONDS = 30.0
# A funnel is counted when someone looks at it, and kept a little longer: its cohort moves
# slowly, and at millions of deliveries counting one takes seconds.
FUNNEL_MAX_AGE = timedelta(minutes=5)
# The per-day charts cover this many days, today (UTC) included.
DAYS = 30

T = TypeVar("T")


@dataclass(frozen=True)
class Cached(Generic[T]):
    """Figures and the moment they were counted."""

    value: T
    computed_at: datetime
    # Served stale while a recount was asked for in the background.
    recounting: bool = False

    def age(self, now: datetime) -> timedelta:
        """How old the figures are at `now`."""
        return max(timedelta(0), now - self.computed_at)


def is_fresh(computed_at: datetime, now: datetime, max_age: timedelta) -> bool:
    """The staleness rule: figures may be served while younger than `max_age`.

    Figures counted "in the future" (the clock was set back since) are stale too: their
    moment cannot be trusted.
    """
    return timedelta(0) <= now - computed_at < max_age


def cached(
    session: Session,
    key: str,
    now: datetime,
    max_age: timedelta,
    count: Callable[[], T],
    dump: Callable[[T], dict[str, Any]],
    load: Callable[[dict[str, Any]], T],
    recount: Callable[[], bool] | None = None,
) -> Cached[T]:
    """The figures stored under `key` while fresh; else `count()` them now and store them.

    With `recount`, stale figures are served as they are once `recount()` has asked for a new
    count elsewhere (it answers whether it could); only missing ones are counted here.
    """
    row = session.get(CachedFigures, key)
    if row is not None and is_fresh(row.computed_at, now, max_age):
        return Cached(load(row.data), row.computed_at)
    if row is not None and recount is not None and recount():
        return Cached(load(row.data), row.computed_at, recounting=True)
    value = count()
    upsert(
        session,
        table_of(CachedFigures),
        "key",
        {"key": key, "computed_at": now, "data": dump(value)},
    )
    return Cached(value, now)


# -- the dashboard -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Day:
    """One day (UTC) of the charts."""

    day: date
    signups: int
    confirmations: int
    sent: int


@dataclass(frozen=True)
class DashboardFigures:
    """Subscribers by state, the last `DAYS` days, and the engine's unsettled work."""

    by_state: dict[SubscriberStatus, int]
    days: list[Day]
    health: Health

    @property
    def subscribers(self) -> int:
        """Everyone on the list, in any state."""
        return sum(self.by_state.values())


def _day_of(session: Session, column: Any) -> ColumnElement[Any]:
    # The UTC calendar day of a stored time: SQLite keeps naive UTC text, PostgreSQL a
    # timestamptz that must be read in UTC whatever the connection's TimeZone.
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)


def _per_day(session: Session, column: Any, start: datetime) -> dict[date, int]:
    # Served by the column's own index (ix_subscribers_created_at, ix_subscribers_confirmed_at,
    # ix_deliveries_sent_at): a month of rows, never the whole table.
    day = _day_of(session, column)
    return {
        date.fromisoformat(str(value)): int(count)
        for value, count in session.execute(
            select(day, func.count()).where(column >= start).group_by(day)
        )
    }


def count_dashboard(session: Session, now: datetime) -> DashboardFigures:
    """Count the dashboard's figures exactly, now."""
    by_state = {
        status: int(count)
        for status, count in session.execute(
            select(Subscriber.status, func.count()).group_by(Subscriber.status)
        )
    }
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=DAYS - 1)
    start = datetime.combine(first, time(0), tzinfo=UTC)
    signups = _per_day(session, Subscriber.created_at, start)
    confirmations = _per_day(session, Subscriber.confirmed_at, start)
    sent = _per_day(session, Delivery.sent_at, start)
    days = []
    for offset in range(DAYS):
        day = first + timedelta(days=offset)
        days.append(Day(day, signups.get(day, 0), confirmations.get(day, 0), sent.get(day, 0)))
    return DashboardFigures(
        by_state={status: by_state.get(status, 0) for status in SubscriberStatus},
        days=days,
        health=health(session, now),
    )


def _dump_dashboard(figures: DashboardFigures) -> dict[str, Any]:
    current = asdict(figures.health)
    oldest = figures.health.oldest_due
    current["oldest_due"] = oldest.isoformat() if oldest else None
    return {
        "by_state": {status.value: count for status, count in figures.by_state.items()},
        "days": [[d.day.isoformat(), d.signups, d.confirmations, d.sent] for d in figures.days],
        "health": current,
    }


def _load_dashboard(data: dict[str, Any]) -> DashboardFigures:
    current = dict(data["health"])
    oldest = current.pop("oldest_due")
    return DashboardFigures(
        by_state={SubscriberStatus(k): int(v) for k, v in data["by_state"].items()},
        days=[Day(date.fromisoformat(d), s, c, m) for d, s, c, m in data["days"]],
        health=Health(oldest_due=datetime.fromisoformat(oldest) if oldest else None, **current),
    )


def dashboard(
    session: Session, now: datetime, max_age: timedelta = MAX_AGE
) -> Cached[DashboardFigures]:
    """The dashboard's figures: the stored ones while fresh, else counted now and stored."""
    return cached(
        session,
        "dashboard",
        now,
        max_age,
        lambda: count_dashboard(session, now),
        _dump_dashboard,
        _load_dashboard,
    )


def refresh_dashboard(session: Session, now: datetime) -> Cached[DashboardFigures]:
    """Count the dashboard's figures now and store them (the beat's periodic refresh)."""
    return dashboard(session, now, max_age=timedelta(0))


# -- the funnel ----------------------------------------------------------------------------------


def _dump_results(results: SequenceResults) -> dict[str, Any]:
    return {
        "slug": results.slug,
        "title": results.title,
        "readers": {status.value: count for status, count in results.readers.items()},
        "parts": [
            {
                **asdict(part),
                "left": {status.value: count for status, count in part.left.items()},
            }
            for part in results.parts
        ],
    }


def _load_results(data: dict[str, Any]) -> SequenceResults:
    parts = []
    for part in data["parts"]:
        left = {SubscriberStatus(k): int(v) for k, v in part.pop("left").items()}
        parts.append(PartResult(left=left, **part))
    return SequenceResults(
        slug=data["slug"],
        title=data["title"],
        readers={EnrollmentStatus(k): int(v) for k, v in data["readers"].items()},
        parts=parts,
    )


def funnel(
    session: Session,
    sequence: Sequence,
    period: str,
    now: datetime,
    max_age: timedelta = FUNNEL_MAX_AGE,
    recount: Callable[[], bool] | None = None,
) -> Cached[SequenceResults]:
    """The results of `sequence` for the readers who enrolled in `period` (a key of
    `results.PERIODS`): the stored ones while fresh; stale ones while `recount()` has a task
    count them again; else counted now and stored."""
    since = since_of(period, now)
    return cached(
        session,
        funnel_key(sequence.id, period),
        now,
        max_age,
        lambda: sequence_results(session, sequence, since),
        _dump_results,
        _load_results,
        recount,
    )


def funnel_key(sequence_id: int, period: str) -> str:
    """Where a sequence's funnel for a period is stored in `cached_figures`."""
    return f"funnel:{sequence_id}:{period}"


def recount_funnel(
    session: Session,
    sequence_id: int,
    period: str,
    now: datetime,
    max_age: timedelta = FUNNEL_MAX_AGE,
) -> bool:
    """Count a stored funnel again (the background task); whether it did.

    Nothing happens when the stored one is fresh (an earlier recount, queued by another reader,
    did it) or when another recount holds its row (PostgreSQL's SKIP LOCKED: several readers of
    a stale funnel ask for one count, not several).
    """
    if period not in PERIODS:
        return False
    row = session.get(
        CachedFigures,
        funnel_key(sequence_id, period),
        with_for_update={"skip_locked": True},
        populate_existing=True,
    )
    sequence = session.get(Sequence, sequence_id)
    if row is None or sequence is None or is_fresh(row.computed_at, now, max_age):
        return False
    row.data = _dump_results(sequence_results(session, sequence, since_of(period, now)))
    row.computed_at = now
    return True
