"""The subscribers table (audience/directory.py): keyset pages, filters, prefix search, export."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask

from newsletter.audience import directory, subscriptions
from newsletter.audience.directory import Query, QueryError
from newsletter.db import db
from newsletter.models import SubscriberStatus
from tests.helpers.people import add_people, add_person, seed_steps, signed_up

START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def walk(query: Query, size: int, between: object = None) -> list[int]:
    """Every id the table shows page by page, following "next" links (a request each)."""
    seen: list[int] = []
    key = None
    while True:
        with db.session() as session:
            page = directory.page(session, query, after=key, size=size)
        seen += [row.id for row in page.rows]
        if callable(between):
            between()
        if page.next_key is None:
            return seen
        key = page.next_key


@pytest.mark.parametrize("sort", ["newest", "oldest", "email"])
def test_pages_lose_and_repeat_nothing_while_rows_are_inserted(app: Flask, sort: str) -> None:
    with db.transaction() as session:
        originals = add_people(session, 40, START, prefix="m")
    inserted: list[int] = []
    counter = iter(range(1000))

    def insert_some() -> None:
        # New people on both sides of the cursor: newer and older times, addresses before and
        # after the page's, as signups and imports land while an admin pages.
        with db.transaction() as writer:
            n = next(counter)
            for email, moment in (
                (f"a{n:03d}@example.org", START + timedelta(days=5, seconds=n)),
                (f"z{n:03d}@example.org", START - timedelta(days=5, seconds=n)),
            ):
                inserted.append(add_person(writer, email, moment).id)

    seen = walk(Query(sort=sort), 7, insert_some)
    assert len(seen) == len(set(seen)), "a row was shown twice"
    assert set(originals) <= set(seen), "a row that was there all along was lost"
    assert set(seen) <= set(originals) | set(inserted)


def test_next_then_previous_returns_the_same_page(app: Flask) -> None:
    with db.transaction() as session:
        add_people(session, 25, START)
    with db.session() as session:
        first = directory.page(session, Query(), size=10)
        second = directory.page(session, Query(), after=first.next_key, size=10)
        third = directory.page(session, Query(), after=second.next_key, size=10)
        back = directory.page(session, Query(), before=third.previous_key, size=10)
        back_to_first = directory.page(session, Query(), before=second.previous_key, size=10)
    assert [r.id for r in back.rows] == [r.id for r in second.rows]
    assert [r.id for r in back_to_first.rows] == [r.id for r in first.rows]
    assert first.previous_key is None and back_to_first.previous_key is None
    assert len(third.rows) == 5 and third.next_key is None
    # Newest first: the first page holds the last 10 made.
    assert [r.email for r in first.rows][0] == "p0024@example.org"


def test_prefix_search_is_case_insensitive_and_literal(app: Flask) -> None:
    with db.transaction() as session:
        for email in ("ann@example.org", "anna@example.org", "a_n@example.org", "bob@example.org"):
            add_person(session, email, START)
        offered = directory.options(session)
        found = {
            q: [
                r.email
                for r in directory.page(session, directory.parse_query({"q": q}, offered)).rows
            ]
            for q in ("ANN", "a_", "a%", "ｂｏｂ", "zed")
        }
    assert sorted(found["ANN"]) == ["ann@example.org", "anna@example.org"]
    assert found["a_"] == ["a_n@example.org"], "_ is a character, not a wildcard"
    assert found["a%"] == []
    assert found["ｂｏｂ"] == ["bob@example.org"], "fullwidth letters are folded as stored"
    assert found["zed"] == []


def test_filters_by_state_sequence_and_step(app: Flask) -> None:
    with db.transaction() as session:
        steps = seed_steps(session)
        walker = signed_up(session, "walker@example.org", START)
        pending = signed_up(session, "pending@example.org", START, confirm=False)
        gone = signed_up(session, "gone@example.org", START)
        subscriptions.unsubscribe(session, gone.id, START, source="test")
        add_person(session, "loose@example.org", START)
        offered = directory.options(session)
        sequence_id = steps[0].sequence_id

        def emails(**args: str) -> set[str]:
            query = directory.parse_query(args, offered)
            return {r.email for r in directory.page(session, query).rows}

        assert emails(state="pending") == {"pending@example.org"}
        assert emails(state="unsubscribed") == {"gone@example.org"}
        assert emails(sequence=str(sequence_id)) == {
            "walker@example.org",
            "pending@example.org",
            "gone@example.org",
        }
        # Part 1 is due for the one who confirmed: they are "on" step 1, nobody else is.
        assert emails(step=str(steps[0].id)) == {"walker@example.org"}
        assert emails(step=str(steps[1].id)) == set()
        row = directory.page(session, directory.parse_query({"q": "walker"}, offered)).rows[0]
        assert row.on_step is not None and row.on_step.startswith("Part 1 of ")
        assert walker.id == row.id and pending.status is SubscriberStatus.PENDING


@pytest.mark.any_database
@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"sort": "email; DROP TABLE subscribers"}, "sort"),
        ({"sort": "created_at"}, "sort"),
        ({"state": "deleted"}, "state"),
        ({"sequence": "1 OR 1=1"}, "sequence"),
        ({"sequence": "999"}, "sequence"),
        ({"step": "-1"}, "step"),
        ({"q": "a" * 400}, "q"),
    ],
)
def test_bad_sort_and_filter_values_are_refused_by_name(
    app: Flask, args: dict[str, str], field: str
) -> None:
    with db.session() as session:
        offered = directory.options(session)
        with pytest.raises(QueryError) as refused:
            directory.parse_query(args, offered)
    assert refused.value.field == field


@pytest.mark.any_database
@pytest.mark.parametrize("key", ["nonsense", "2026-11-01T12:00:00|x", "2026-13-01|3", "|5"])
def test_a_forged_page_key_is_a_clear_error(app: Flask, key: str) -> None:
    with db.session() as session, pytest.raises(QueryError) as refused:
        directory.page(session, Query(), after=key)
    assert refused.value.field == "page"


def test_export_streams_every_filtered_row_with_formulas_neutralised(app: Flask) -> None:
    hostile = {
        '=HYPERLINK("https://evil.example","x")': "hyper@example.org",
        "+1+1": "plus@example.org",
        "-2": "minus@example.org",
        "@SUM(A1)": "at@example.org",
        "\tTab": "tab@example.org",
        "<script>alert(1)</script>": "script@example.org",
    }
    with db.transaction() as session:
        for name, email in hostile.items():
            person = add_person(session, email, START, first_name="x")
            # Stored as a name could never be through the signup form (clean_name refuses
            # most of these): the export must be safe whatever the database holds.
            person.first_name = name
        add_people(session, 30, START + timedelta(hours=1))
        add_person(session, "left@example.org", START, status=SubscriberStatus.UNSUBSCRIBED)
    with db.session() as session:
        chunks = list(directory.export_csv(session, Query(state=SubscriberStatus.ACTIVE), batch=8))
    assert len(chunks) > 3, "the export comes in batches"
    text = "".join(chunks)
    assert not text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 36
    assert "left@example.org" not in {r["email"] for r in rows}
    names = {r["email"]: r["first_name"] for r in rows}
    for name, email in hostile.items():
        shown = names[email]
        if name[0] in "=+-@\t":
            assert shown == "'" + name
        else:
            assert shown == name
    for row in rows:
        for cell in row.values():
            assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r")


def test_the_table_does_not_show_open_rows_of_others(app: Flask) -> None:
    """The step column comes from the person's own open delivery, not anyone else's."""
    with db.transaction() as session:
        one = signed_up(session, "one@example.org", START)
        two = add_person(session, "two@example.org", START)
        page = directory.page(session, Query(sort="email"))
    rows = {r.email: r for r in page.rows}
    assert rows["one@example.org"].on_step is not None
    assert rows["two@example.org"].on_step is None
    assert rows["one@example.org"].id == one.id and rows["two@example.org"].id == two.id
