"""The admin's pages at 1,000,000 subscribers and 5,000,000 deliveries on PostgreSQL.

A fresh database (`pg_database()`, dropped afterwards unless --keep) gets the product's
tables from the migrations and the seed sequence, then INSERT ... SELECT generate_series
fills it: --subscribers people (every state, five time zones, names that are hostile
markup, SQL and template text, non-Latin scripts, or none), created over two years; their
confirmation mails, each reader's parts of the seed sequence as far as they got (the next
part open: scheduled, a few due now, retrying, claimed or failed; a skipped part after an
unsubscribe, a failed one for a bounce), a second four-part sequence for a sixth of the
readers, and their events (signup, confirm, unsubscribe, a few uncertain). VACUUM ANALYZE,
then each measurement runs --runs times after --warmup runs: median and p95 in ms.

What is measured, at the server (no network, no browser):
  * the figures: the dashboard's exact count (what a stale cache costs the reader who finds
    it, and what the beat's refresh costs), the engine's health alone, and the cached read;
    the funnel counted for each period, and its cached read;
  * the pages (`PAGES`), through Flask's test client, signed in as an editor, with the
    figures cached as the beat keeps them. A page that answers 404 is not on this branch
    and is skipped with a note.

    .venv/bin/python bench/admin_pages.py [--subscribers 1000000] [--runs 30] [--keep]
    .venv/bin/python bench/admin_pages.py --reuse bench_admin_0123456789   # a kept database
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    free_port,
    log,
    machine,
    median_p95,
    source_revision,
    table,
    wait_for_quiet,
)
from bench._services import PG_ADMIN_URL, pg_database, product_env  # noqa: E402

# The pages timed, by path; {sequence} and {subscriber} are filled in from the data.
PAGES = [
    "/admin/dashboard",
    "/admin/sequences/{sequence}/funnel",
    "/admin/sequences/{sequence}/funnel?period=all",
    "/admin/subscribers",
    "/admin/subscribers?state=active&sequence=1",
    "/admin/subscribers?q=user12",
    "/admin/subscribers/{subscriber}",
]

NAMES = (
    "'<script>alert(1)</script>'", "'Robert''); DROP TABLE subscribers;--'",
    "'{{ config.SECRET_KEY }}'", "'Zoë Ångström'", "'محمد'", "'李小龙'", "'\"><img src=x>'",
    "NULL",
)  # fmt: skip

FILL = (
    """
-- Who: a pseudo-random bucket per person chooses the state; created over two years.
CREATE TEMP TABLE people AS
SELECT g,
       CASE WHEN b < 70 THEN 'active' WHEN b < 80 THEN 'pending'
            WHEN b < 92 THEN 'unsubscribed' WHEN b < 98 THEN 'bounced'
            ELSE 'complained' END AS status,
       %(now)s - mod(g::bigint * 104729, 730 * 1440) * interval '1 minute' AS created
FROM generate_series(1, %(subs)s) AS g,
     LATERAL (SELECT mod(g::bigint * 7919, 100) AS b) AS bucket""",
    "ALTER TABLE people ADD COLUMN sent int",
    """
-- How many parts each one was sent: all four after four days; those who left, 0 to 3.
UPDATE people SET sent = CASE
    WHEN status = 'pending' THEN 0
    WHEN status = 'active'
        THEN least(4, floor(extract(epoch FROM %(now)s - created) / 86400)::int + 1)
    ELSE mod(g, 4) END""",
    f"""
INSERT INTO subscribers (id, email, first_name, time_zone, status, created_at, confirmed_at,
                         unsubscribed_at, consent_at, consent_ip, consent_user_agent,
                         consent_form)
SELECT g, 'user' || g || '@example.org',
       (ARRAY[{", ".join(NAMES)}])[1 + mod(g, {len(NAMES)})],
       (ARRAY['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Tokyo',
              'Australia/Sydney'])[1 + mod(g, 5)],
       status, created,
       CASE WHEN status <> 'pending' THEN created + mod(g, 120) * interval '1 minute' END,
       CASE WHEN status = 'unsubscribed' THEN created + (sent + 1) * interval '1 day' END,
       created, '192.0.2.' || mod(g, 250), '<b>Mozilla</b>/5.0 "bench"', 'signup-form'
FROM people""",
    """
INSERT INTO enrollments (id, subscriber_id, sequence_id, status, created_at, started_at,
                         ended_at, stop_reason)
SELECT g, g, %(first)s,
       CASE WHEN status = 'pending' THEN 'pending' WHEN status <> 'active' THEN 'stopped'
            WHEN sent = 4 THEN 'completed' ELSE 'active' END,
       created,
       CASE WHEN status <> 'pending' THEN created + mod(g, 120) * interval '1 minute' END,
       CASE WHEN status NOT IN ('pending', 'active')
            THEN created + (sent + 1) * interval '1 day' END,
       CASE WHEN status IN ('unsubscribed', 'bounced') THEN status END
FROM people""",
    """
INSERT INTO enrollments (id, subscriber_id, sequence_id, status, created_at, started_at)
SELECT %(subs)s + g, g, %(second)s, 'completed', created, created
FROM people WHERE status = 'active' AND sent = 4 AND mod(g, 4) = 0""",
    """
-- Every confirmation mail was sent a few seconds after its signup.
INSERT INTO deliveries (kind, subscriber_id, due_at, first_due_at, state, attempts, sent_at,
                        message_id, created_at)
SELECT 'confirm', g, created, created, 'sent', 1, created + interval '5 seconds',
       '<c' || g || '@example.test>', created
FROM people""",
    """
-- The seed sequence's parts: those sent, then the next one, open or settled by the person's
-- state (an unsubscribe skipped it, a bounce failed it; complaints came after a sent part).
INSERT INTO deliveries (kind, subscriber_id, enrollment_id, step_id, due_at, first_due_at,
                        state, attempts, last_error, claimed_at, sent_at, message_id, created_at)
SELECT 'step', g, g, st.id, due, due, state,
       CASE WHEN state IN ('sent', 'failed', 'retry') THEN 1 ELSE 0 END,
       CASE WHEN state IN ('failed', 'retry') THEN '550 5.1.1 <b>no such user</b>' END,
       CASE WHEN state = 'claimed' THEN %(now)s - interval '20 seconds' END,
       CASE WHEN state = 'sent' THEN due + interval '3 seconds' END,
       CASE WHEN state = 'sent' THEN '<s' || g || '.' || p || '@example.test>' END,
       due
FROM people
CROSS JOIN generate_series(1, 4) AS p
JOIN steps st ON st.sequence_id = %(first)s AND st.position = p
CROSS JOIN LATERAL (
    SELECT CASE
             WHEN p <= sent THEN 'sent'
             WHEN status = 'unsubscribed' THEN 'skipped'
             WHEN status = 'bounced' THEN 'failed'
             WHEN mod(g, 499) = 0 THEN 'claimed'
             WHEN mod(g, 211) = 0 THEN 'failed'
             WHEN mod(g, 97) = 0 THEN 'retry'
             ELSE 'scheduled' END AS state,
           CASE WHEN p <= sent OR status <> 'active' THEN created + (p - 1) * interval '1 day'
                WHEN mod(g, 50) = 0 THEN %(now)s - interval '2 minutes'
                ELSE %(now)s + interval '6 hours' END AS due
) AS x
WHERE status <> 'pending' AND status <> 'complained' AND p <= sent + 1 AND p <= 4
   OR status = 'complained' AND p <= sent""",
    """
INSERT INTO deliveries (kind, subscriber_id, enrollment_id, step_id, due_at, first_due_at,
                        state, attempts, sent_at, message_id, created_at)
SELECT 'step', e.subscriber_id, e.id, st.id, e.created_at + st.position * interval '1 day',
       e.created_at + st.position * interval '1 day', 'sent', 1,
       e.created_at + st.position * interval '1 day' + interval '2 seconds',
       '<w' || e.id || '.' || st.position || '@example.test>',
       e.created_at + st.position * interval '1 day'
FROM enrollments e JOIN steps st ON st.sequence_id = e.sequence_id
WHERE e.sequence_id = %(second)s""",
    """
INSERT INTO events (subscriber_id, kind, data, created_at)
SELECT g, 'signup', '{"form": "signup-form"}'::json, created FROM people
UNION ALL
SELECT g, 'confirm', '{}', created + mod(g, 120) * interval '1 minute'
FROM people WHERE status <> 'pending'
UNION ALL
SELECT g, 'unsubscribe', '{"how": "one-click"}', created + (sent + 1) * interval '1 day'
FROM people WHERE status = 'unsubscribed'
UNION ALL
SELECT g, 'uncertain', '{}', created FROM people WHERE mod(g, 50000) = 0""",
)


def fill(database_url: str, subscribers: int) -> dict[str, Any]:
    """Migrate, import the seed, add a second sequence and load the rows; counts and time."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from newsletter.content.sequences import SEED_ARTICLE, ensure_seed, import_article
    from newsletter.db import make_engine
    from newsletter.migrate import upgrade
    from newsletter.models import Sequence

    started = time.perf_counter()
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            ensure_seed(session)
            first = session.scalars(select(Sequence).order_by(Sequence.id)).one().id
            # The second sequence is the shipped article again, imported as the product
            # imports any article, so that it has every column the schema asks for.
            import_article(session, SEED_ARTICLE, slug="welcome")
            second = session.scalar(select(Sequence.id).where(Sequence.slug == "welcome"))
            params = {"now": datetime.now(UTC), "subs": subscribers, "first": first,
                      "second": second}  # fmt: skip
            conn = session.connection()
            for statement in FILL:
                conn.exec_driver_sql(statement, params)
            for name in ("subscribers", "enrollments"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                    f"(SELECT max(id) FROM {name}))"
                )
        loaded = time.perf_counter() - started
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("VACUUM (ANALYZE)")
            counts = {
                name: int(conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar() or 0)
                for name in ("subscribers", "enrollments", "deliveries", "events")
            }
            size = conn.exec_driver_sql(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            ).scalar()
        return {**counts, "first": first, "second": int(second), "load_s": loaded,
                "total_s": time.perf_counter() - started, "size": size}  # fmt: skip
    finally:
        engine.dispose()


def measure(fn: Callable[[], Any], runs: int, warmup: int) -> tuple[float, float]:
    """Median and p95 of `fn`'s wall time, in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    med, p95 = median_p95(times)
    return 1000 * med, 1000 * p95


def figures_rows(app: Any, sequence_id: int, runs: int, warmup: int) -> list[list[str]]:
    """The figures' costs, cold (counted) and cached (read back)."""
    from newsletter import clock
    from newsletter.audience import figures
    from newsletter.content.results import PERIODS, sequence_results, since_of
    from newsletter.db import db
    from newsletter.delivery.status import health
    from newsletter.models import Sequence

    rows: list[list[str]] = []

    def row(what: str, fn: Callable[[], Any], times: int = runs) -> None:
        with app.app_context():
            med, p95 = measure(fn, times, warmup)
        rows.append([what, f"{med:.1f}", f"{p95:.1f}"])
        log(f"  {what}: median {med:.1f} ms, p95 {p95:.1f} ms")

    def in_session(work: Callable[[Any], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with db.transaction() as session:
                return work(session)

        return run

    # Counting at this size takes seconds: fewer runs, still a median.
    slow = max(3, runs // 5)
    row(
        "dashboard figures, counted",
        in_session(lambda s: figures.count_dashboard(s, clock.now())),
        slow,
    )
    row("  of which the engine's health", in_session(lambda s: health(s, clock.now())))
    with app.app_context(), db.transaction() as session:
        figures.refresh_dashboard(session, clock.now())
    row("dashboard figures, cached", in_session(lambda s: figures.dashboard(s, clock.now())))
    for period in PERIODS:
        row(
            f"funnel ({period}), counted",
            in_session(
                lambda s, p=period: sequence_results(
                    s, s.get(Sequence, sequence_id), since_of(p, clock.now())
                )
            ),
            slow,
        )
    row(
        "funnel (30), cached",
        in_session(lambda s: figures.funnel(s, s.get(Sequence, sequence_id), "30", clock.now())),
    )
    return rows


def signed_in_client(app: Any) -> Any:
    """A test client signed in as a new editor (a reused database keeps the earlier runs'
    accounts), or None while the admin is not on this branch."""
    if "admin.dashboard" not in app.view_functions:
        return None
    from tests.helpers.admin import create_admin, signed_in

    email = f"bench-editor-{secrets.token_hex(4)}@example.test"
    password = secrets.token_urlsafe(16)
    create_admin(app, email, role="editor", password=password)
    client = app.test_client()
    signed_in(client, email, password)
    return client


def pages_rows(
    app: Any, sequence_id: int, runs: int, warmup: int
) -> tuple[list[list[str]], list[str]]:
    """Each page of PAGES through the test client, signed in; and the notes of skipped ones."""
    rows: list[list[str]] = []
    notes: list[str] = []
    client = signed_in_client(app)
    if client is None:
        return rows, ["no admin on this branch (admin.dashboard is not a route): pages not timed"]
    for page in PAGES:
        path = page.format(sequence=sequence_id, subscriber=12345)
        answer = client.get(path)
        if answer.status_code == 404:
            notes.append(f"{path}: 404, not on this branch; skipped")
            continue
        if answer.status_code != 200:
            notes.append(f"{path}: answered {answer.status_code}; skipped")
            continue

        def get(path: str = path) -> None:
            assert client.get(path).status_code == 200

        med, p95 = measure(get, runs, warmup)
        log(f"  GET {path}: median {med:.1f} ms, p95 {p95:.1f} ms")
        rows.append([f"GET {path}", f"{med:.1f}", f"{p95:.1f}"])
    return rows, notes


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[str]:
    """The database to measure: a kept one of this benchmark's (--reuse), or a fresh one."""
    if args.reuse:
        if not args.reuse.startswith("bench_admin_"):
            raise SystemExit("--reuse takes only a database this benchmark made (bench_admin_*)")
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{args.reuse}"
    elif args.keep:
        import psycopg

        name = f"bench_admin_{secrets.token_hex(5)}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        log(f"keeping database {name} (drop it when done, or --reuse it)")
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    else:
        with pg_database("bench_admin") as url:
            yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the database for --reuse")
    parser.add_argument("--reuse", help="a database this benchmark kept (bench_admin_...)")
    parser.add_argument(
        "--quiet-wait", type=float, default=120, help="seconds to wait for a quiet machine"
    )
    args = parser.parse_args(argv)

    from newsletter.db import db
    from tests.helpers.apps import make_app

    load = wait_for_quiet(threshold=2.5, max_wait=args.quiet_wait)
    with database(args) as url, tempfile.TemporaryDirectory() as tmp:
        if args.reuse:
            from sqlalchemy import create_engine, text

            engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
            with engine.connect() as conn:
                counts = {n: int(conn.execute(text(f"SELECT count(*) FROM {n}")).scalar() or 0)
                          for n in ("subscribers", "deliveries", "events")}  # fmt: skip
                first = int(conn.execute(text("SELECT min(id) FROM sequences")).scalar() or 0)
            engine.dispose()
            made: dict[str, Any] = {**counts, "first": first}
        else:
            log(f"filling {args.subscribers:,} subscribers ...")
            made = fill(url, args.subscribers)
            log(
                f"filled in {made['load_s']:.0f} s (+ VACUUM ANALYZE: {made['total_s']:.0f} s), "
                f"{made['size']}"
            )
        env = product_env(Path(tmp), url, free_port(), REDIS_URL="memory://")
        app = make_app(env)
        log("figures:")
        figure_rows = figures_rows(app, made["first"], args.runs, args.warmup)
        log("pages:")
        page_rows, notes = pages_rows(app, made["first"], args.runs, args.warmup)
        with app.app_context():
            db.dispose()
    print(
        f"{made['subscribers']:,} subscribers, {made['deliveries']:,} deliveries, "
        f"{made['events']:,} events; {args.runs} runs after {args.warmup} warm-up runs "
        f"(the counted figures: {max(3, args.runs // 5)} runs)"
    )
    print(f"{machine()}; {source_revision()}; {load}")
    print()
    print(table([["measured at the server", "median ms", "p95 ms"], *figure_rows, *page_rows],
                right=(1, 2)))  # fmt: skip
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
