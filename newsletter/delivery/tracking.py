"""What a tracked mail records: the first click on each of its links, and its first open.

The web edge reads the signed token (`tokens.py` `read_click`, `read_open`) and calls these
with the delivery and link it names. A click leads only to a URL the delivery's own step holds
(`mail/tracking.py` `step_links`, looked up by index), never to one from the request. Each is
recorded once, by the tables' unique keys; nothing here touches a subscription. Counting needs
the sequence to track now: after an owner turns tracking off, an older mail's links still lead
where they did, and nothing more is recorded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.mail.tracking import step_links
from newsletter.models import Click, Delivery, Open, Sequence, Step, table_of

_CLICKS = table_of(Click)
_OPENS = table_of(Open)


def _tracked_step(session: Session, delivery_id: int) -> tuple[Step, bool] | None:
    """The step a delivery carries, and whether its sequence tracks; None without a step."""
    found = session.execute(
        select(Step, Sequence.tracking)
        .select_from(Delivery)
        .join(Step, Step.id == Delivery.step_id)
        .join(Sequence, Sequence.id == Step.sequence_id)
        .where(Delivery.id == delivery_id)
    ).first()
    return None if found is None else (found[0], bool(found[1]))


def _insert_once(session: Session, table: Table, values: dict[str, Any]) -> None:
    """Insert a row unless its unique key is taken: two clicks at once record one."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(table).values(**values).on_conflict_do_nothing())


def follow(
    session: Session, delivery_id: int, link: int, now: datetime, *, record: bool = True
) -> str | None:
    """Where link number `link` of the delivery's mail leads, its first click recorded.

    None when the delivery, its step or that link does not exist: the caller redirects nowhere.
    `record=False` answers the same and records nothing (a HEAD: a link checker, not a reader).
    """
    found = _tracked_step(session, delivery_id)
    if found is None:
        return None
    step, tracking = found
    links = step_links(step)
    if not 0 <= link < len(links):
        return None
    if tracking and record:
        _insert_once(
            session, _CLICKS, {"delivery_id": delivery_id, "link": link, "clicked_at": now}
        )
    return links[link]


def opened(session: Session, delivery_id: int, now: datetime, *, record: bool = True) -> bool:
    """Record the first open of a delivery's mail; False when no such mail exists."""
    found = _tracked_step(session, delivery_id)
    if found is None:
        return False
    if found[1] and record:
        _insert_once(session, _OPENS, {"delivery_id": delivery_id, "opened_at": now})
    return True
