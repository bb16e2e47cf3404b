"""What one message costs inside a worker, without Celery: time and SQL per message.

On a fresh database (as in `pipeline.py`: migrations, seed sequence, --deliveries due part-1
deliveries), this process claims the rows (`claims.claim_due`) and runs the real task body,
`newsletter.tasks.send_batch.run(ids)`, batch after batch inside the app context, into the
counting SMTP sink (its own process). SQLAlchemy engine events count every statement by verb
and every commit, and time each cursor execute; the Composer's `step`/`message` and the SMTP
transport's `send` are timed by wrapping them on their instances (the product code is not
changed). Prints per message: wall time, time in SQL execute, composing, SMTP (incl.
serialisation), the rest (ORM, commits, flow control), and statements and transactions.
With --cprofile N, the N functions with the most own time under cProfile (slower run).

    .venv/bin/python bench/send_cost.py [--stack pg-redis,embedded] [--deliveries 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    log,
    machine,
    source_revision,
    table,
    wait_for_quiet,
)
from bench._services import (  # noqa: E402
    PrivateRedis,
    pg_database,
    product_env,
    seed_due_deliveries,
)
from bench._sink import Sink  # noqa: E402


@contextlib.contextmanager
def stack(name: str, workdir: Path, port: int, batch: int) -> Iterator[dict[str, str]]:
    extra = {"SEND_BATCH_SIZE": str(batch)}
    if name == "pg-redis":
        with pg_database("bench_send") as url, PrivateRedis(workdir) as redis:
            yield product_env(workdir, url, port, BROKER_URL=redis.url, **extra)
    else:
        from newsletter import embedded

        instance = workdir / "instance"
        embedded.ensure_running(instance)  # the flow-control store of the embedded run
        try:
            yield product_env(workdir, f"sqlite:///{workdir / 'nl.db'}", port, **extra)
        finally:
            embedded.stop(instance)


class Timer:
    """Wall and CPU time (this process) spent in wrapped calls."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu = 0.0
        self.calls = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.cpu += time.process_time() - cpu
                self.calls += 1

        return timed


def _verb(sql: str) -> str:
    words = sql.strip().strip('"').split()
    if not words or words[0] == ";":
        return "pool pre-ping (empty query)"
    return words[0].upper()


def exchanges(trace: str) -> Counter[str]:
    """Client/server round trips in a libpq trace, by what the client sent to start each.

    An exchange ends with the server's ReadyForQuery; it is named after its first frontend
    message: a simple Query (BEGIN, COMMIT, the pool's pre-ping, an empty query), the first
    word of a parsed statement (SELECT, UPDATE, INSERT), or of a prepared one being bound.
    """
    prepared: dict[str, str] = {}
    counts: Counter[str] = Counter()
    current: str | None = None
    for line in trace.splitlines():
        cols = line.split("\t")
        if len(cols) < 3:
            continue
        side, kind = cols[0], cols[2]
        body = "\t".join(cols[3:]).strip()
        label: str | None = None
        if side == "F" and kind == "Query":
            label = _verb(body.strip('"'))
        elif side == "F" and kind == "Parse":
            # Parse "name" "SQL..." n types: the SQL is printed unescaped, take its first word.
            name, _, sql = body.partition('" "')
            label = _verb(sql)
            if name.strip('"'):
                prepared[name.strip('"')] = label
                label = f"PREPARE {label}"
        elif side == "F" and kind == "Bind":
            # Bind "portal" "statement" ...: a named statement is a prepared one.
            match = re.match(r'"[^"]*" "([^"]*)"', body)
            if match and match.group(1):
                label = prepared.get(match.group(1), "?")
        if side == "F" and current is None and label is not None:
            current = label
        elif side == "B" and kind == "ReadyForQuery":
            counts[current or "?"] += 1
            current = None
    return counts


def by_package(stats: pstats.Stats) -> Counter[str]:
    """cProfile own time grouped like the py-spy summaries (C calls by what they are)."""
    from bench._profile_summary import _category

    groups: Counter[str] = Counter()
    for (file, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        own = row[2]
        if file == "~":
            if any(k in name for k in ("recv", "sendall", "poll", "select")):
                label = "socket I/O and waits (SMTP, Redis, PostgreSQL)"
            elif "sqlite3" in name:
                label = "DB-API call (sqlite3 in C: query, commit, lock wait)"
            else:
                label = "C builtins (str, dict, re, ...)"
        else:
            label = _category({"file": file, "name": name})
        groups[label] += own
    return groups


def run(name: str, sink: Sink, args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import event

    from newsletter import clock, create_app
    from newsletter.config import load_settings
    from newsletter.db import db
    from newsletter.delivery import claims
    from newsletter.runtime import Runtime
    from newsletter.tasks import send_batch

    workdir = Path(tempfile.mkdtemp(prefix=f"bench-send-{name}-"))
    try:
        with stack(name, workdir, sink.port, args.send_batch_size) as env:
            seed_due_deliveries(env["DATABASE_URL"], args.deliveries, tracking=args.tracking)
            app = create_app(load_settings(env))
            rt = app.extensions["newsletter"]
            assert isinstance(rt, Runtime)
            with app.app_context():
                ids: list[int] = []
                claim = clock.now()  # the claim's stamp, carried by every batch as the task's is
                while True:
                    with db.transaction() as session:
                        got = claims.claim_due(session, claim, 500)
                    ids += got
                    if len(got) < 500:
                        break
                batches = [ids[i : i + args.send_batch_size]
                           for i in range(0, len(ids), args.send_batch_size)]  # fmt: skip
                # Warm up (connections, the step cache) outside the measurement.
                send_batch.run(batches.pop(0), claim.isoformat())
                verbs: Counter[str] = Counter()
                sql = Timer()
                commits = Counter[str]()
                stamps: dict[int, float] = {}
                cpu_stamps: dict[int, float] = {}

                def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
                    verbs[statement.lstrip().split(None, 1)[0].upper()] += 1
                    stamps[id(cursor)] = time.perf_counter()
                    cpu_stamps[id(cursor)] = time.process_time()

                def after(conn: Any, cursor: Any, *_: Any) -> None:
                    sql.seconds += time.perf_counter() - stamps.pop(id(cursor), time.perf_counter())
                    sql.cpu += time.process_time() - cpu_stamps.pop(id(cursor), time.process_time())

                def on_commit(conn: Any) -> None:
                    commits["commit"] += 1

                def on_rollback(conn: Any) -> None:
                    commits["rollback"] += 1

                engine = db.engine
                if "no-pre-ping" in args.what_if:
                    engine.pool._pre_ping = False  # what-if: no ping on each checkout
                if "async-commit" in args.what_if and engine.dialect.name == "postgresql":

                    def no_fsync_wait(dbapi_conn: Any, _record: Any) -> None:
                        with dbapi_conn.cursor() as cur:  # what-if: commits without WAL flush
                            cur.execute("SET synchronous_commit = off")
                        dbapi_conn.commit()

                    event.listen(engine, "connect", no_fsync_wait)
                    db.dispose()
                traced: list[Any] = []
                trace_path = workdir / "libpq-trace.txt"
                if engine.dialect.name == "postgresql":
                    # Every client/server exchange of the measured part, from libpq itself.
                    trace_fd = os.open(trace_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

                    def on_connect(dbapi_conn: Any, _record: Any) -> None:
                        from psycopg import pq

                        dbapi_conn.pgconn.trace(os.dup(trace_fd))
                        dbapi_conn.pgconn.set_trace_flags(
                            pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE
                        )
                        traced.append(dbapi_conn)

                    event.listen(engine, "connect", on_connect)
                    db.dispose()  # reconnect, traced
                event.listen(engine, "before_cursor_execute", before)
                event.listen(engine, "after_cursor_execute", after)
                event.listen(engine, "commit", on_commit)
                event.listen(engine, "rollback", on_rollback)
                compose_step, compose_msg, smtp = Timer(), Timer(), Timer()
                composer, transport = rt.composer, rt.transport()
                composer.step = compose_step.wrap(composer.step)  # type: ignore[method-assign]
                composer.wire = compose_msg.wrap(composer.wire)  # type: ignore[method-assign]
                transport.send_data = smtp.wrap(transport.send_data)  # type: ignore[method-assign]
                profiler = cProfile.Profile() if args.cprofile else None
                sink.reset()
                outcomes: Counter[str] = Counter()
                started, cpu_started = time.perf_counter(), time.process_time()
                if profiler:
                    profiler.enable()
                for batch in batches:
                    outcomes.update(send_batch.run(batch, claim.isoformat()))
                if profiler:
                    profiler.disable()
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
                for ev, fn in (("before_cursor_execute", before), ("after_cursor_execute", after),
                               ("commit", on_commit), ("rollback", on_rollback)):  # fmt: skip
                    event.remove(engine, ev, fn)
                for dbapi_conn in traced:
                    with contextlib.suppress(Exception):
                        dbapi_conn.pgconn.untrace()  # flushes the trace
                db.dispose()
            n = sum(len(b) for b in batches)
            result = {
                "stack": name, "n": n, "wall": wall, "sql": sql.seconds,
                "compose": compose_step.seconds + compose_msg.seconds, "smtp": smtp.seconds,
                "cpu": cpu, "sql_cpu": sql.cpu, "compose_cpu": compose_step.cpu + compose_msg.cpu,
                "smtp_cpu": smtp.cpu,
                "verbs": dict(verbs), "commits": dict(commits), "outcomes": dict(outcomes),
                "received": sink.messages,
            }  # fmt: skip
            if traced:
                result["exchanges"] = exchanges(trace_path.read_text(errors="replace"))
            if profiler:
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("tottime").print_stats(args.cprofile)
                result["cprofile"] = out.getvalue()
                result["by_package"] = by_package(stats)
            return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stack", default="pg-redis,embedded", help="pg-redis, embedded")
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--send-batch-size", type=int, default=50)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="top N by own time")
    parser.add_argument(
        "--what-if", default="", metavar="LIST",
        help="experiments in this process only, not the product: no-pre-ping (the pool does "
        "not ping on checkout), async-commit (PostgreSQL synchronous_commit=off)",
    )  # fmt: skip
    parser.add_argument(
        "--tracking", action="store_true", help="the sequence tracks; part 1 has five links"
    )
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load <= this")
    parser.add_argument("--max-wait", type=float, default=120.0, help="...for at most this long")
    args = parser.parse_args(argv)
    load = wait_for_quiet(args.max_load, args.max_wait)
    revision = source_revision()
    results = []
    with Sink() as sink:
        for name in (s.strip() for s in args.stack.split(",")):
            log(f"{name}: {args.deliveries:,} deliveries ...")
            results.append(run(name, sink, args))
    print(f"Cost per message in one process (task body, no Celery); {machine()}")
    print(f"SEND_BATCH_SIZE={args.send_batch_size}; {load}; product code: {revision}")
    if args.tracking:
        print("The sequence tracks: part 1 has five links, each a signed token per mail.")
    if args.what_if:
        print(f"WHAT-IF experiment (not the product's configuration): {args.what_if}")
    print()
    rows = [
        [
            "stack",
            "messages",
            "msg/s",
            "",
            "per msg, ms",
            "SQL execute",
            "compose",
            "SMTP send",
            "rest (ORM, BEGIN/COMMIT, pings, Redis)",
            "statements",
            "commits",
        ]
    ]
    for r in results:
        n = r["n"]
        for kind, suffix in (("wall", ""), ("CPU", "_cpu")):
            total = r["wall"] if kind == "wall" else r["cpu"]
            parts = [r["sql" + suffix], r["compose" + suffix], r["smtp" + suffix]]
            rest = total - sum(parts)
            first = kind == "wall"
            rows.append([
                r["stack"] if first else "", f"{n:,}" if first else "",
                f"{n / r['wall']:,.0f}" if first else "", kind, f"{1000 * total / n:.2f}",
                *(f"{1000 * p / n:.2f}" for p in parts), f"{1000 * rest / n:.2f}",
                f"{sum(r['verbs'].values()) / n:.1f}" if first else "",
                f"{r['commits'].get('commit', 0) / n:.2f}" if first else "",
            ])  # fmt: skip
    print(table(rows, right=(1, 2, 4, 5, 6, 7, 8, 9, 10)))
    print()
    print("Per message, wall clock and CPU of this process: SQL execute is the driver's execute")
    print("(round trip + server work; BEGIN, COMMIT and pool pings not included); SMTP send")
    print("includes serialising the message (as_bytes); statements and commits per message.")
    for r in results:
        n = r["n"]
        verbs = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(r["verbs"].items()))
        print(f"  {r['stack']}: statements per message: {verbs}; outcomes {r['outcomes']}; "
              f"sink received {r['received']:,}")  # fmt: skip
        if r.get("exchanges"):
            ex = r["exchanges"]
            print(f"  {r['stack']}: PostgreSQL round trips per message (libpq trace): "
                  f"{sum(ex.values()) / n:.1f} = " + ", ".join(
                      f"{k} {v / n:.2f}" for k, v in ex.most_common()))  # fmt: skip
        if "by_package" in r:
            total = sum(r["by_package"].values())
            print(f"  {r['stack']}: cProfile own time by package ({total:.1f} s, profiler on):")
            for label, own in r["by_package"].most_common():
                print(f"    {100 * own / total:5.1f}%  {1000 * own / n:6.2f} ms/msg  {label}")
        if "cprofile" in r:
            print(r["cprofile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
