"""The subscribers table: filters, prefix search and keyset pages that stay fast at millions.

A page is fetched by a tuple comparison on its sort key, `(created_at, id) < (:c, :i)`, never
with OFFSET, and never counted exactly: "next" and "previous" carry the edge rows' keys.
Every order and filter is served by an index (models.py, the people block):

- newest / oldest: ix_subscribers_created, or ix_subscribers_status_created within a state;
- address: the unique address index, or ix_subscribers_status_email within a state;
- address prefix: ix_subscribers_email_prefix (varchar_pattern_ops on PostgreSQL, so that
  `LIKE 'ann%'` is an index range; on SQLite the same range is written out as >= and <);
- sequence: ix_enrollments_sequence_subscriber; step: ix_deliveries_step_state.

Sort and filter values come from the query string and are whitelisted here: anything else is
a QueryError naming the parameter, never a 500 or a fragment of SQL.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, literal, select, tuple_
from sqlalchemy.orm import Session

from newsletter.models import (
    OPEN_STATES,
    Delivery,
    Enrollment,
    Sequence,
    Step,
    Subscriber,
    SubscriberStatus,
)

PAGE_SIZE = 50
EXPORT_BATCH = 1000
# Cells a spreadsheet would run as a formula (or that hide one after a control character).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MAX_PREFIX = 320

# The orders the table offers: name → (the key columns, newest first?).
SORTS: dict[str, tuple[str, bool]] = {
    "newest": ("created_at", True),
    "oldest": ("created_at", False),
    "email": ("email", False),
}
SORT_LABELS = {"newest": "Newest first", "oldest": "Oldest first", "email": "Address (A–Z)"}
EXPORT_COLUMNS = (
    "email",
    "first_name",
    "status",
    "time_zone",
    "created_at",
    "confirmed_at",
    "unsubscribed_at",
    "consent_at",
    "consent_form",
)


class QueryError(ValueError):
    """A sort, filter or page parameter the table does not offer, with the parameter's name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Query:
    """What the table shows: filters (all optional), a prefix of the address and an order."""

    state: SubscriberStatus | None = None
    sequence_id: int | None = None
    step_id: int | None = None
    prefix: str = ""
    sort: str = "newest"

    def params(self) -> dict[str, str]:
        """The query as URL parameters (empty ones left out), for links and the export."""
        values = {
            "state": self.state.value if self.state else "",
            "sequence": str(self.sequence_id or ""),
            "step": str(self.step_id or ""),
            "q": self.prefix,
            "sort": self.sort if self.sort != "newest" else "",
        }
        return {name: value for name, value in values.items() if value}

    def describe(self) -> dict[str, Any]:
        """The filter in words for the audit log."""
        return {
            "state": self.state.value if self.state else None,
            "sequence_id": self.sequence_id,
            "step_id": self.step_id,
            "prefix": self.prefix or None,
            "sort": self.sort,
        }


@dataclass(frozen=True)
class StepOption:
    """A step that can be filtered on, with its sequence."""

    id: int
    sequence_id: int
    position: int
    subject: str


@dataclass(frozen=True)
class Options:
    """The values the filters accept: the sequences and their steps."""

    sequences: dict[int, str]
    steps: list[StepOption]


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    id: int
    email: str
    first_name: str | None
    status: SubscriberStatus
    created_at: datetime
    erased: bool
    # Where they are: "Part 3 of <sequence>" for their open delivery, if any.
    on_step: str | None = None


@dataclass(frozen=True)
class Page:
    """A page of rows and the keys of the pages either side (None at an end)."""

    rows: list[Row]
    next_key: str | None
    previous_key: str | None
    query: Query = field(default_factory=Query)


def options(session: Session) -> Options:
    """The sequences and steps the filters offer."""
    sequences = {
        int(row.id): str(row.title)
        for row in session.execute(select(Sequence.id, Sequence.title).order_by(Sequence.id))
    }
    steps = [
        StepOption(
            id=row.id, sequence_id=row.sequence_id, position=row.position, subject=row.subject
        )
        for row in session.execute(
            # Live steps only: a removed step keeps its row (and a negative position).
            select(Step.id, Step.sequence_id, Step.position, Step.subject)
            .where(Step.removed_at.is_(None))
            .order_by(Step.sequence_id, Step.position)
        )
    ]
    return Options(sequences=sequences, steps=steps)


def _whole_number(args: Mapping[str, str], name: str, label: str) -> int | None:
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise QueryError(name, f"Choose a {label} from the list.")
    return int(raw)


def parse_query(args: Mapping[str, str], offered: Options) -> Query:
    """The table's query from URL parameters, whitelisted; QueryError names a bad one."""
    state_raw = (args.get("state") or "").strip()
    state: SubscriberStatus | None = None
    if state_raw:
        try:
            state = SubscriberStatus(state_raw)
        except ValueError:
            raise QueryError("state", "Choose a state from the list.") from None
    sort = (args.get("sort") or "newest").strip()
    if sort not in SORTS:
        raise QueryError("sort", "Choose an order from the list.")
    sequence_id = _whole_number(args, "sequence", "sequence")
    if sequence_id is not None and sequence_id not in offered.sequences:
        raise QueryError("sequence", "Choose a sequence from the list.")
    step_id = _whole_number(args, "step", "step")
    if step_id is not None:
        step = next((s for s in offered.steps if s.id == step_id), None)
        if step is None:
            raise QueryError("step", "Choose a step from the list.")
        if sequence_id is not None and step.sequence_id != sequence_id:
            raise QueryError("step", "That step belongs to another sequence.")
    prefix = unicodedata.normalize("NFKC", args.get("q") or "").strip().lower()
    if len(prefix) > MAX_PREFIX or any(c in prefix for c in "\r\n\x00"):
        raise QueryError("q", "Search by the start of an address (at most 320 characters).")
    return Query(state=state, sequence_id=sequence_id, step_id=step_id, prefix=prefix, sort=sort)


def _key_columns(sort: str) -> tuple[Any, Any]:
    column, _ = SORTS[sort]
    return getattr(Subscriber, column), Subscriber.id


def encode_key(row: Row, sort: str) -> str:
    """The page key of a row: its sort value and id, as a URL parameter carries it."""
    column, _ = SORTS[sort]
    value = row.created_at.isoformat() if column == "created_at" else row.email
    return f"{value}|{row.id}"


def decode_key(raw: str, sort: str) -> tuple[Any, int]:
    """A page key back into (sort value, id); QueryError if it was not made by encode_key."""
    value, _, id_text = raw.rpartition("|")
    if not value or not id_text.isascii() or not id_text.isdigit() or len(id_text) > 18:
        raise QueryError("page", "That page link is not valid; start again from the first page.")
    column, _ = SORTS[sort]
    if column == "created_at":
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise QueryError("page", "That page link is not valid; start again.") from None
        if moment.tzinfo is None:
            raise QueryError("page", "That page link is not valid; start again.")
        return moment, int(id_text)
    return value, int(id_text)


def _prefix_condition(session: Session, prefix: str) -> ColumnElement[bool]:
    if session.get_bind().dialect.name == "postgresql":
        # LIKE with a constant prefix is a range of ix_subscribers_email_prefix (pattern ops).
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return Subscriber.email.like(escaped + "%", escape="\\")
    # SQLite's LIKE ignores case and so cannot use a plain index; the same range, written out,
    # can. Stored addresses are lower-case already.
    return (Subscriber.email >= prefix) & (Subscriber.email < prefix + "\U0010ffff")


def filtered(session: Session, query: Query) -> Select[tuple[Subscriber]]:
    """The subscribers the query's filters keep, not yet ordered or limited."""
    statement = select(Subscriber)
    if query.state is not None:
        statement = statement.where(Subscriber.status == query.state)
    if query.prefix:
        statement = statement.where(_prefix_condition(session, query.prefix))
    if query.sequence_id is not None:
        statement = statement.where(
            exists().where(
                Enrollment.sequence_id == query.sequence_id,
                Enrollment.subscriber_id == Subscriber.id,
            )
        )
    if query.step_id is not None:
        # The step a person is on: their open (waiting or being sent) delivery's step.
        statement = statement.where(
            exists().where(
                Delivery.step_id == query.step_id,
                Delivery.state.in_(OPEN_STATES),
                Delivery.subscriber_id == Subscriber.id,
            )
        )
    return statement


def _ordered(
    statement: Select[tuple[Subscriber]], sort: str, key: tuple[Any, int] | None, backwards: bool
) -> Select[tuple[Subscriber]]:
    value_column, id_column = _key_columns(sort)
    _, descending = SORTS[sort]
    forwards_down = descending != backwards
    if key is not None:
        edge = tuple_(value_column, id_column)
        # Bound with the columns' own types, so that a time is compared in its stored form.
        bound = tuple_(
            literal(key[0], type_=value_column.type), literal(key[1], type_=id_column.type)
        )
        statement = statement.where(edge < bound if forwards_down else edge > bound)
    if forwards_down:
        return statement.order_by(value_column.desc(), id_column.desc())
    return statement.order_by(value_column.asc(), id_column.asc())


def _row(subscriber: Subscriber) -> Row:
    return Row(
        id=subscriber.id,
        email=subscriber.email,
        first_name=subscriber.first_name,
        status=subscriber.status,
        created_at=subscriber.created_at,
        erased=subscriber.erased_at is not None,
    )


def _where_they_are(session: Session, rows: list[Row]) -> list[Row]:
    """Each row with the step of its open delivery (one query for the page)."""
    if not rows:
        return rows
    found: dict[int, str] = {}
    for subscriber_id, position, title in session.execute(
        select(Delivery.subscriber_id, Step.position, Sequence.title)
        .join(Step, Step.id == Delivery.step_id)
        .join(Sequence, Sequence.id == Step.sequence_id)
        .where(
            Delivery.subscriber_id.in_([r.id for r in rows]),
            Delivery.state.in_(OPEN_STATES),
        )
        .order_by(Delivery.due_at)
    ):
        found.setdefault(subscriber_id, f"Part {position} of {title}")
    return [replace(row, on_step=found[row.id]) if row.id in found else row for row in rows]


def page(
    session: Session,
    query: Query,
    *,
    after: str | None = None,
    before: str | None = None,
    size: int = PAGE_SIZE,
) -> Page:
    """One page of the table: the first, the one after a key, or the one before a key."""
    if after and before:
        raise QueryError("page", "That page link is not valid; start again.")
    backwards = bool(before)
    raw = before or after
    key = decode_key(raw, query.sort) if raw else None
    statement = _ordered(filtered(session, query), query.sort, key, backwards).limit(size + 1)
    found = [_row(s) for s in session.scalars(statement)]
    more = len(found) > size
    rows = found[:size]
    if backwards:
        rows.reverse()
    rows = _where_they_are(session, rows)
    if not rows:
        return Page(rows=[], next_key=None, previous_key=None, query=query)
    first, last = encode_key(rows[0], query.sort), encode_key(rows[-1], query.sort)
    if backwards:
        return Page(rows, next_key=last, previous_key=first if more else None, query=query)
    return Page(
        rows, next_key=last if more else None, previous_key=first if key else None, query=query
    )


def each(session: Session, query: Query, batch: int = EXPORT_BATCH) -> Iterator[Subscriber]:
    """Every subscriber the query keeps, in its order, fetched in keyset batches."""
    key: tuple[Any, int] | None = None
    while True:
        statement = _ordered(filtered(session, query), query.sort, key, False).limit(batch)
        found = list(session.scalars(statement))
        yield from found
        if len(found) < batch:
            return
        last = found[-1]
        column, _ = SORTS[query.sort]
        key = (getattr(last, column), last.id)
        # The batch is written out; its objects need not stay in the session's identity map.
        session.expunge_all()


def neutralise(cell: str) -> str:
    """A cell a spreadsheet shows as text: a leading formula character gets a ' before it."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return neutralise(str(value))


def export_csv(session: Session, query: Query, batch: int = EXPORT_BATCH) -> Iterator[str]:
    """The CSV export of the table's current filter: a header, then one chunk per batch."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for subscriber in each(session, query, batch):
        writer.writerow([_cell(getattr(subscriber, name)) for name in EXPORT_COLUMNS])
        count += 1
        if count % batch == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
