"""Rows in every table of a database at revision 0003, for the migration tests: what a
running 0003 database holds, and a snapshot of its rows and the links between them."""

from __future__ import annotations

from sqlalchemy import Connection, text

TABLES = (
    "sequences",
    "steps",
    "subscribers",
    "enrollments",
    "deliveries",
    "events",
    "suppressions",
    "breaker_trips",
)
T = "'2026-11-01 10:00:00'"
LINKS = (
    "SELECT id, enrollment_id, step_id, subscriber_id, state, kind FROM deliveries ORDER BY id",
    "SELECT id, delivery_id, subscriber_id, kind FROM events ORDER BY id",
    "SELECT id, subscriber_id, sequence_id, status, stop_reason FROM enrollments ORDER BY id",
    "SELECT id, sequence_id, position FROM steps ORDER BY id",
)


def fill(conn: Connection) -> None:
    """Rows in every table, as a running 0003 database has them."""
    conn.execute(
        text(
            "INSERT INTO sequences (id, slug, title, description, is_default, send_hour,"
            f" send_end_hour, send_days, created_at) VALUES (1, 's', 'S', '', true, 9, 21,"
            f" '1234567', {T})"
        )
    )
    for step in (1, 2, 3):
        conn.execute(
            text(
                "INSERT INTO steps (id, sequence_id, position, day_offset, subject, preheader,"
                f" body_md, resources, updated_at) VALUES ({step}, 1, {step}, {step - 1},"
                f" 'Part {step}', '', 'Body', '[]', {T})"
            )
        )
    for sub, status in ((1, "active"), (2, "unsubscribed"), (3, "pending")):
        conn.execute(
            text(
                "INSERT INTO subscribers (id, email, time_zone, status, created_at)"
                f" VALUES ({sub}, 'p{sub}@example.org', 'UTC', '{status}', {T})"
            )
        )
    for enr, sub, status, reason in (
        (1, 1, "active", "NULL"),
        (2, 2, "stopped", "'unsubscribed'"),
        (3, 3, "pending", "NULL"),
    ):
        conn.execute(
            text(
                "INSERT INTO enrollments (id, subscriber_id, sequence_id, status, created_at,"
                f" stop_reason) VALUES ({enr}, {sub}, 1, '{status}', {T}, {reason})"
            )
        )
    # Ids as SQL literals ("NULL" for none).
    deliveries: tuple[tuple[int, str, int, int | str, int | str, str], ...] = (
        (1, "confirm", 1, "NULL", "NULL", "sent"),
        (2, "step", 1, 1, 1, "sent"),
        (3, "step", 1, 1, 2, "scheduled"),
        (4, "step", 2, 2, 1, "sent"),
        (5, "step", 2, 2, 2, "skipped"),
        (6, "confirm", 3, "NULL", "NULL", "retry"),
    )
    for d_id, kind, sub, enrollment, step_id, state in deliveries:
        conn.execute(
            text(
                "INSERT INTO deliveries (id, kind, subscriber_id, enrollment_id, step_id, due_at,"
                f" first_due_at, state, attempts, created_at, reaps) VALUES ({d_id}, '{kind}',"
                f" {sub}, {enrollment}, {step_id}, {T}, {T}, '{state}', 1, {T}, 0)"
            )
        )
    for e_id, sub, d_id, kind in ((1, 1, 2, "confirm"), (2, 2, 5, "unsubscribe"), (3, 3, 6, "x")):
        conn.execute(
            text(
                "INSERT INTO events (id, subscriber_id, delivery_id, kind, data, created_at)"
                f" VALUES ({e_id}, {sub}, {d_id}, '{kind}', '{{}}', {T})"
            )
        )
    conn.execute(
        text(
            "INSERT INTO suppressions (id, email, reason, created_at)"
            f" VALUES (1, 'gone@example.org', 'bounce', {T})"
        )
    )
    conn.execute(
        text(f"INSERT INTO breaker_trips (id, reason, tripped_at) VALUES (1, 'test', {T})")
    )


def snapshot(conn: Connection) -> dict[str, object]:
    counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}
    links = {q: [tuple(r) for r in conn.execute(text(q))] for q in LINKS}
    return {**counts, **links}
