"""What one claim costs on PostgreSQL as the deliveries table grows (100k vs 1M rows).

A fresh database gets the product's tables from the migrations and the seed sequence. For each
--sizes N the tables are emptied and refilled with INSERT ... SELECT generate_series: N
deliveries over N/4 subscribers (one enrollment each, four parts each). A subscriber has sent
`id % 5` parts; the next part is scheduled in the future (a few are `retry`), the rest are
skipped; about --due of the scheduled rows are due now. Then VACUUM ANALYZE (the steady state
autovacuum keeps), and `newsletter.delivery.planning.claim_due(session, now, --limit)` is timed
--repeat times, each in a transaction that is rolled back, so every repetition claims the
same rows. The SQL the claim emits is captured and shown with EXPLAIN (ANALYZE, BUFFERS) at
the largest size, with a check for sequential scans of `deliveries`.

    .venv/bin/python bench/claim_cost.py [--sizes 100000,1000000] [--due 2000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    log,
    machine,
    median_p95,
    source_revision,
    table,
    wait_for_quiet,
)
from bench._services import pg_database  # noqa: E402

FILL = (
    """
INSERT INTO subscribers (id, email, first_name, time_zone, status, created_at, confirmed_at,
                         consent_at, consent_ip, consent_form)
SELECT g, 'reader' || g || '@example.test', 'Reader' || g,
       (ARRAY['UTC','Europe/Berlin','America/New_York','Asia/Tokyo'])[1 + mod(g, 4)],
       CASE WHEN mod(g, 11) = 0 THEN 'unsubscribed' ELSE 'active' END,
       %(now)s - interval '10 days', %(now)s - interval '10 days', %(now)s - interval '10 days',
       '127.0.0.1', 'bench'
FROM generate_series(1, %(subs)s) AS g""",
    """
INSERT INTO enrollments (id, subscriber_id, sequence_id, status, created_at, started_at)
SELECT g, g, %(sequence)s,
       CASE WHEN mod(g, 11) = 0 THEN 'stopped' WHEN mod(g, 5) = 4 THEN 'completed'
            ELSE 'active' END,
       %(now)s - interval '10 days', %(now)s - interval '10 days'
FROM generate_series(1, %(subs)s) AS g""",
    """
-- Row d: subscriber s = (d-1)/4 + 1, part p = mod(d-1, 4) + 1; s has sent mod(s, 5) parts.
INSERT INTO deliveries (kind, subscriber_id, enrollment_id, step_id, due_at, first_due_at,
                        state, attempts, last_error, claimed_at, attempted_at, sent_at,
                        message_id, created_at)
SELECT 'step', s, s, st.id,
       CASE WHEN x.state = 'sent' THEN %(now)s - (10 - p) * interval '1 day'
            WHEN x.due THEN %(now)s - (mod(s, 3600)) * interval '1 second'
            ELSE %(now)s + interval '1 hour' + (mod(s, 4320)) * interval '1 minute' END,
       %(now)s - (10 - p) * interval '1 day',
       x.state, CASE WHEN x.state = 'sent' THEN 1 ELSE 0 END, NULL, NULL, NULL,
       CASE WHEN x.state = 'sent' THEN %(now)s - (10 - p) * interval '1 day' END,
       CASE WHEN x.state = 'sent' THEN '<' || d || '@example.test>' END,
       %(now)s - interval '10 days'
FROM generate_series(1, %(rows)s) AS d
CROSS JOIN LATERAL (SELECT (d - 1) / 4 + 1 AS s, mod(d - 1, 4) + 1 AS p) AS sp
JOIN steps st ON st.sequence_id = %(sequence)s AND st.position = sp.p
CROSS JOIN LATERAL (
    SELECT CASE
             WHEN mod(s, 11) = 0 THEN 'skipped'
             WHEN p <= mod(s, 5) THEN 'sent'
             WHEN p = mod(s, 5) + 1 AND mod(s, 97) = 0 THEN 'retry'
             WHEN p = mod(s, 5) + 1 THEN 'scheduled'
             ELSE 'skipped' END AS state,
           (p = mod(s, 5) + 1 AND mod(s, 11) <> 0 AND mod(s, %(due_stride)s) = 0) AS due
) AS x
""",
)


class Overrun(Exception):
    pass


def fill(engine: Any, sequence_id: int, rows: int, due: int) -> dict[str, Any]:
    """Empty the tables and load `rows` deliveries; return the state counts and the time."""
    from sqlalchemy import text

    subs = (rows + 3) // 4
    # Open (scheduled or retry) rows: one per subscriber with fewer than 4 parts sent and not
    # unsubscribed, i.e. about subs * 4/5 * 10/11; pick every k-th subscriber's to be due.
    open_rows = subs * 4 / 5 * 10 / 11
    due_stride = max(1, round(open_rows / due))
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE events, deliveries, enrollments, subscribers RESTART IDENTITY CASCADE"
        )
        params = {"now": datetime.now(UTC), "subs": subs, "rows": rows,
                  "sequence": sequence_id, "due_stride": due_stride}  # fmt: skip
        for statement in FILL:
            conn.exec_driver_sql(statement, params)
        for name in ("subscribers", "enrollments"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), {subs})"))
    loaded = time.perf_counter() - started
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("VACUUM (ANALYZE) subscribers, enrollments, deliveries")
        states = dict(
            conn.exec_driver_sql("SELECT state, count(*) FROM deliveries GROUP BY state").all()
        )
        due_now = conn.exec_driver_sql(
            "SELECT count(*) FROM deliveries WHERE state IN ('scheduled', 'retry') "
            "AND due_at <= now()"
        ).scalar()
        size = conn.exec_driver_sql(
            "SELECT pg_size_pretty(pg_total_relation_size('deliveries'))"
        ).scalar()
    return {"states": states, "due_now": int(due_now or 0), "load_s": loaded,
            "total_s": time.perf_counter() - started, "table_size": size}  # fmt: skip


def measure(engine: Any, limit: int, repeat: int, warmup: int) -> dict[str, Any]:
    """Time claim_due in rolled-back transactions; capture the SQL of the claim."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from newsletter.delivery.claims import claim_due

    now = datetime.now(UTC)
    times: list[float] = []
    claimed: set[int] = set()
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "UPDATE deliveries" in statement:
            captured.append((statement, params))

    with Session(engine) as session:
        for i in range(warmup + repeat):
            if i == warmup:
                event.listen(engine, "before_cursor_execute", capture)
            session.begin()
            try:
                started = time.perf_counter()
                ids = claim_due(session, now, limit)
                elapsed = time.perf_counter() - started
            finally:
                session.rollback()
            if i == warmup:
                event.remove(engine, "before_cursor_execute", capture)
            if i >= warmup:
                times.append(elapsed)
                claimed.add(len(ids))
    med, p95 = median_p95(times)
    return {"median_ms": 1000 * med, "p95_ms": 1000 * p95, "min_ms": 1000 * min(times),
            "max_ms": 1000 * max(times), "claimed": sorted(claimed),
            "sql": captured[0] if captured else None}  # fmt: skip


def explain(engine: Any, sql: str, params: Any) -> tuple[str, float]:
    """EXPLAIN (ANALYZE, BUFFERS) of the captured claim, rolled back."""
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).all()
        finally:
            trans.rollback()
    plan = "\n".join(r[0] for r in rows)
    execution = 0.0
    for line in plan.splitlines():
        if line.strip().startswith("Execution Time:"):
            execution = float(line.split(":")[1].split()[0])
    return plan, execution


def inline(sql: str, params: Any) -> str:
    """The statement with its parameters written in, for reading (not for running)."""
    if isinstance(params, dict):
        for key, value in params.items():
            sql = sql.replace(f"%({key})s", repr(str(value)) if not isinstance(value, int)
                              else str(value))  # fmt: skip
    return sql


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000", help="deliveries rows, comma list")
    parser.add_argument("--due", type=int, default=2000, help="rows due now at each size")
    parser.add_argument("--limit", type=int, default=500, help="claim size (DISPATCH_BATCH_SIZE)")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--total-timeout", type=float, default=900.0, help="seconds, hard stop")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load <= this")
    parser.add_argument("--max-wait", type=float, default=120.0, help="...for at most this long")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    def overrun(*_: object) -> None:
        raise Overrun()

    signal.signal(signal.SIGALRM, overrun)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    signal.alarm(int(args.total_timeout))
    load = wait_for_quiet(args.max_load, args.max_wait)
    revision = source_revision()
    results: list[dict[str, Any]] = []
    plans: dict[int, tuple[str, float]] = {}
    sql_text = ""
    try:
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from newsletter.content.sequences import ensure_seed
        from newsletter.db import make_engine
        from newsletter.migrate import upgrade
        from newsletter.models import Sequence

        with pg_database("bench_claim") as url:
            upgrade(url)
            engine = make_engine(url)
            try:
                with Session(engine) as session, session.begin():
                    ensure_seed(session)
                with Session(engine) as session:
                    sequence_id = session.scalars(select(Sequence.id).order_by(Sequence.id)).one()
                server = engine.connect().exec_driver_sql("SHOW server_version").scalar()
                for size in sizes:
                    log(f"loading {size:,} deliveries ...")
                    filled = fill(engine, sequence_id, size, args.due)
                    log(f"  loaded in {filled['load_s']:.1f} s (+ vacuum analyze: "
                        f"{filled['total_s']:.1f} s); {filled['due_now']:,} due now")  # fmt: skip
                    measured = measure(engine, args.limit, args.repeat, args.warmup)
                    if measured["sql"]:
                        statement, params = measured["sql"]
                        sql_text = inline(statement, params)
                        plans[size] = explain(engine, statement, params)
                    log(f"  claim: median {measured['median_ms']:.2f} ms, "
                        f"p95 {measured['p95_ms']:.2f} ms")  # fmt: skip
                    results.append({"size": size, **filled, **measured})
            finally:
                engine.dispose()
    except Overrun:
        log("total timeout reached; reporting what finished")
    finally:
        signal.alarm(0)

    print(f"Claim cost on PostgreSQL {server if results else ''}: claims.claim_due(session, now, "
          f"{args.limit}) in a rolled-back transaction; {machine()}")  # fmt: skip
    print(f"{args.repeat} timed repetitions after {args.warmup} warm-up; {load} at start; "
          f"product code: {revision}")  # fmt: skip
    print()
    rows = [["deliveries", "table size", "due now", "claimed", "median ms", "p95 ms",
             "min-max ms", "server ms (EXPLAIN)", "seq scan on deliveries"]]  # fmt: skip
    for r in results:
        plan, server_ms = plans.get(r["size"], ("", 0.0))
        rows.append([
            f"{r['size']:,}", str(r["table_size"]), f"{r['due_now']:,}",
            "/".join(str(c) for c in r["claimed"]), f"{r['median_ms']:.2f}",
            f"{r['p95_ms']:.2f}", f"{r['min_ms']:.2f}-{r['max_ms']:.2f}", f"{server_ms:.2f}",
            "yes" if "Seq Scan on deliveries" in plan else "no",
        ])  # fmt: skip
    print(table(rows, right=(0, 2, 3, 4, 5, 6, 7)))
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print()
        print(
            f"ratio {b['size']:,} / {a['size']:,} rows: "
            f"median {b['median_ms'] / a['median_ms']:.2f}x, p95 {b['p95_ms'] / a['p95_ms']:.2f}x"
        )
    for r in results:
        states = ", ".join(f"{k}={v:,}" for k, v in sorted(r["states"].items()))
        print(f"  {r['size']:,} rows: {states}; load {r['load_s']:.1f} s, "
              f"with VACUUM ANALYZE {r['total_s']:.1f} s")  # fmt: skip
    if sql_text:
        print()
        print("The claim statement (parameters written in):")
        print(sql_text)
    if plans:
        size = max(plans)
        print()
        print(f"EXPLAIN (ANALYZE, BUFFERS) at {size:,} rows:")
        print(plans[size][0])
        with contextlib.suppress(KeyError):
            small = min(plans)
            if small != size:
                nodes = [line.split("(cost=")[0].replace("->", "").strip()
                         for line in plans[small][0].splitlines() if "(cost=" in line]  # fmt: skip
                print()
                print(f"plan nodes at {small:,} rows: " + "; ".join(nodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
