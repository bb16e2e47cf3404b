"""The audit log page: newest first, keyset-paginated, filtered by actor, action and period.

Only the four parameters below are read, and each is checked against what it may be (an
account id, an action name's shape, one of the periods, a cursor's shape); anything else
answers 400 with the reason beside the filter. Before and after are shown as JSON text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import render_template, request, url_for
from flask.typing import ResponseReturnValue

from newsletter import clock
from newsletter.admins import accounts, audit
from newsletter.db import db
from newsletter.models import AuditEntry
from newsletter.web.admin import bp
from newsletter.web.admin.access import editor_required

PAGE_SIZE = 50
PERIODS = {
    "": ("Any time", None),
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
    "90d": ("Last 90 days", timedelta(days=90)),
}
ACTION_SHAPE = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*")
CURSOR_SHAPE = re.compile(r"(\d{1,20})-(\d{1,20})")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Choice:
    """The filter as asked for, its query form, and what was wrong with it."""

    actor: str = ""
    action: str = ""
    period: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    filter: audit.AuditFilter = field(default_factory=audit.AuditFilter)
    cursor: audit.Cursor | None = None

    def query(self) -> dict[str, Any]:
        """The chosen filters as query parameters (empty ones left out)."""
        chosen = {"actor": self.actor, "action": self.action, "period": self.period}
        return {name: value for name, value in chosen.items() if value}


def cursor_text(cursor: audit.Cursor) -> str:
    """A cursor as the `after` parameter: microseconds since 1970, a dash, the entry id."""
    micros = (cursor.created_at - EPOCH) // timedelta(microseconds=1)
    return f"{micros}-{cursor.id}"


def parse_cursor(text: str) -> audit.Cursor | None:
    """The cursor an `after` parameter names, or None if it is not one."""
    match = CURSOR_SHAPE.fullmatch(text)
    if match is None:
        return None
    try:
        when = EPOCH + timedelta(microseconds=int(match.group(1)))
    except OverflowError:
        return None
    return audit.Cursor(when, int(match.group(2)))


def read_choice(args: dict[str, str], actor_ids: set[int]) -> Choice:
    """Check the query parameters; errors name the filter they belong to."""
    choice = Choice(
        actor=args.get("actor", ""), action=args.get("action", ""), period=args.get("period", "")
    )
    actor_id = None
    if choice.actor:
        if not choice.actor.isdigit() or int(choice.actor) not in actor_ids:
            choice.errors["actor"] = "Choose an account from the list."
        else:
            actor_id = int(choice.actor)
    if choice.action and (len(choice.action) > 64 or not ACTION_SHAPE.fullmatch(choice.action)):
        choice.errors["action"] = "Choose an action from the list."
    since = None
    if choice.period not in PERIODS:
        choice.errors["period"] = "Choose a period from the list."
    else:
        span = PERIODS[choice.period][1]
        since = clock.now() - span if span is not None else None
    after = args.get("after", "")
    if after:
        choice.cursor = parse_cursor(after)
        if choice.cursor is None:
            choice.errors["after"] = "That page link is broken: start from the newest entries."
    choice.filter = audit.AuditFilter(
        actor_id=actor_id,
        action=(choice.action or None) if "action" not in choice.errors else None,
        since=since,
    )
    return choice


def as_text(data: dict[str, Any] | None) -> str:
    """Before or after as text, a `name: JSON value` line per field (escaped by the template
    like any text; JSON shows control characters such as CR and LF as escapes)."""
    if data is None:
        return ""
    return "\n".join(
        f"{name}: {json.dumps(value, ensure_ascii=False, default=str)}"
        for name, value in sorted(data.items())
    )


@bp.get("/audit", endpoint="audit")
@editor_required
def audit_page() -> ResponseReturnValue:
    """One page of the audit log."""
    with db.session() as tx:
        admins = accounts.listing(tx)
        choice = read_choice(
            {k: request.args.get(k, "") for k in ("actor", "action", "period", "after")},
            {a.id for a in admins},
        )
        rows: list[AuditEntry] = []
        next_cursor: audit.Cursor | None = None
        if not choice.errors:
            rows, next_cursor = audit.page(tx, choice.filter, after=choice.cursor, size=PAGE_SIZE)
        known_actions = audit.actions(tx)
    next_url = (
        url_for("admin.audit", **choice.query(), after=cursor_text(next_cursor))
        if next_cursor is not None
        else None
    )
    page = render_template(
        "admin/audit.html",
        rows=rows,
        choice=choice,
        admins=admins,
        actions=known_actions,
        periods=[(value, label) for value, (label, _) in PERIODS.items()],
        next_url=next_url,
        newest_url=url_for("admin.audit", **choice.query()) if choice.cursor else None,
        as_text=as_text,
    )
    return page, 400 if choice.errors else 200
