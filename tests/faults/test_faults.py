"""Fault injection: the drip series survives crashes, lost brokers, bad SMTP and clock jumps.

Each case runs a real worker with beat against a real SMTP server the test owns, on two stacks
("embedded": SQLite + the embedded broker; "pg-redis": PostgreSQL + a private redis-server on
its own port), injects one kind of fault while the series is in progress, and ends with the
same check (`tests/faults/check.py::check_outcome`), judged from the mail the SMTP server received.
Every case prints a `[fault report]` line with its uncertain events and duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.delivery import breaker, claims, dispatch, sending
from newsletter.mail.transport import SmtpTransport
from newsletter.models import (
    Delivery,
    Enrollment,
    EnrollmentStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from newsletter.runtime import Runtime
from tests.faults.check import Expectations, Report, check_copies, check_outcome
from tests.faults.probes import (
    claimed_subscribers,
    db_retry,
    in_flight_subscribers,
    sent_claimed_after,
)
from tests.faults.smtp import FaultSmtp
from tests.faults.stack import EmbeddedBroker, Fleet, terminate_backends
from tests.helpers.apps import base_env, make_app
from tests.helpers.env import PG_ADMIN_URL
from tests.helpers.mailparse import link, unsubscribe_path
from tests.helpers.redis_server import PrivateRedis
from tests.helpers.webclient import confirm
from tests.helpers.workers import WorkerProcess, start_worker, stop_worker

pytestmark = pytest.mark.slow

DAY = 2.0
TICK = 0.5
SMTP_TIMEOUT = 2.0
PEOPLE = 22  # two of them unsubscribe after part 1 in every case
BLOCKED = "blocked@example.org"  # suppressed before signing up: must never get anything
COMMON = {
    "DRIP_DAY_SECONDS": str(DAY),
    "DISPATCH_INTERVAL_SECONDS": str(TICK),
    "CLAIM_TIMEOUT_SECONDS": "4",
    "RETRY_SCHEDULE": "1,1,2",
    "SMTP_TIMEOUT_SECONDS": str(SMTP_TIMEOUT),
    "SEND_BATCH_SIZE": "5",
    # The error brake may trip under these faults; keep its pause short so runs stay bounded.
    "BRAKE_MAX_PAUSE_SECONDS": "3",
}


# -- fixtures: everything started here is stopped in teardown, whatever the outcome ----------


@dataclass
class Stack:
    name: str
    env: dict[str, str]
    broker: PrivateRedis | EmbeddedBroker
    pg_database: str | None = None


@pytest.fixture
def fault_smtp() -> Iterator[FaultSmtp]:
    smtp = FaultSmtp()
    smtp.start()
    try:
        yield smtp
    finally:
        smtp.stop()


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("pg-redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path, fault_smtp: FaultSmtp) -> Iterator[Stack]:
    if request.param == "embedded":
        url = str(request.getfixturevalue("sqlite_url"))
        env = base_env(
            tmp_path, url, fault_smtp.sink, BROKER_URL="embedded", REDIS_URL="embedded", **COMMON
        )
        broker: PrivateRedis | EmbeddedBroker = EmbeddedBroker(Path(env["INSTANCE_DIR"]))
        result = Stack("embedded", env, broker)
    else:
        pg = str(request.getfixturevalue("postgres_url"))
        private = PrivateRedis(tmp_path / "redis")
        private.start()
        broker = private
        env = base_env(
            tmp_path, pg, fault_smtp.sink, BROKER_URL=private.url, REDIS_URL=private.url, **COMMON
        )
        result = Stack("pg-redis", env, broker, pg_database=pg.rsplit("/", 1)[1])
    try:
        yield result
    finally:
        broker.stop()


@pytest.fixture
def fleet(stack: Stack, tmp_path: Path) -> Iterator[Fleet]:
    """Workers of the test; stopped before the broker, database and SMTP server go away."""
    workers = Fleet(tmp_path, start_worker, stop_worker)
    try:
        yield workers
    finally:
        workers.stop_all()
        db.dispose()


# -- the common scenario -----------------------------------------------------------------------


@dataclass
class Run:
    """One case in progress: the app for requests, the people, what the case did."""

    case: str
    stack: Stack
    smtp: FaultSmtp
    fleet: Fleet
    env: dict[str, str]
    app: Flask
    client: FlaskClient
    emails: list[str]
    worker: WorkerProcess
    started: float = field(default_factory=time.monotonic)
    left: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def runtime(self) -> Runtime:
        value = self.app.extensions["newsletter"]
        assert isinstance(value, Runtime)
        return value

    def parts(self, k: int) -> int:
        return self.smtp.count(lambda a: a.part == k)

    def wait_part(self, k: int, n: int, timeout: float = 40.0) -> None:
        self.smtp.wait_count(n, timeout, f"copies of part {k}", lambda a: a.part == k)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"[{self.case}] {text}")

    def subscriber_id(self, email: str) -> int:
        def read() -> int:
            with db.session() as session:
                return int(
                    session.scalars(select(Subscriber.id).where(Subscriber.email == email)).one()
                )

        return int(db_retry(read))

    def unsubscribe(self, email: str, path: str | None = None) -> None:
        """RFC 8058 one-click POST; records when it returned."""
        if path is None:
            token = self.runtime.tokens.unsubscribe_token(self.subscriber_id(email))
            path = f"/unsubscribe/{token}"
        fresh = self.app.test_client(use_cookies=False)
        response = fresh.post(path, data={"List-Unsubscribe": "One-Click"})
        self.left[email] = time.time()
        assert response.status_code == 200, response.get_data(as_text=True)[:500]

    def leave_after_part_one(self, emails: list[str]) -> None:
        """These people click one-click unsubscribe in their part 1."""
        for email in emails:
            first = self.smtp.wait_part_for(email, 1)
            self.unsubscribe(email, unsubscribe_path(first.message))

    def expect_recovery(self, after: str, timeout: float = 30.0) -> None:
        """The same worker process carries on by itself: alive, and sending new claims again."""
        recovered = self.recovers(timeout)
        exited = self.worker.proc.poll()
        assert exited is None, (
            f"the worker exited (code {exited}) after {after}:\n{self.worker.log()[-3000:]}"
        )
        assert recovered, f"nothing claimed after {after} was sent within {timeout:.0f} s"

    def recovers(self, timeout: float) -> bool:
        """Whether mail claimed from now on is sent within `timeout` seconds."""
        moment = clock.now()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sent_claimed_after(moment):
                self.note(f"mail flows again after {timeout - (deadline - time.monotonic()):.1f}s")
                return True
            time.sleep(0.25)
        return False

    def finish(
        self, report_line: Callable[[str], None], expect: Expectations | None = None
    ) -> Report:
        """The end check; its report line goes into the run's summary."""
        expect = expect or Expectations(active=set())
        expect.active = set(self.emails) - set(self.left) - expect.bounced
        expect.left = dict(self.left)
        expect.pre_suppressed = {BLOCKED}
        report = check_outcome(
            f"{self.case}[{self.stack.name}]", self.smtp, expect, notes=self.notes
        )
        report.notes.append(f"took {time.monotonic() - self.started:.0f}s")
        faults = dict(self.smtp.handler.faults)
        if faults:
            report.notes.append(f"smtp faults {faults}")
        report_line(report.line())
        assert not report.problems, (
            "\n".join(report.problems[:30]) + "\n" + self.fleet.logs()[-6000:]
        )
        return report


def begin(
    case: str,
    stack: Stack,
    smtp: FaultSmtp,
    fleet: Fleet,
    *,
    people: int = PEOPLE,
    leave: int = 2,
    **extra_env: str,
) -> Run:
    """Sign people up, start a worker with beat, confirm through the links in their mail."""
    env = {**stack.env, **extra_env}
    app = make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
        session.add(Suppression(email=BLOCKED, reason="manual", detail="before the test"))
    emails = [f"p{n:02d}@example.org" for n in range(people)]
    now = clock.now()
    for email in [*emails, BLOCKED]:
        with db.transaction() as session:
            subscriptions.signup(
                session,
                subscriptions.SignupRequest(email=email, first_name="Pat", time_zone="UTC"),
                now,
            )
    worker = fleet.start(env)
    run = Run(case, stack, smtp, fleet, env, app, app.test_client(), emails, worker)
    smtp.wait_count(people, 40, "confirmations", lambda a: a.is_confirmation)
    for email in emails:
        mail = next(a for a in smtp.arrivals if a.to == email and a.is_confirmation)
        response = confirm(run.client, link(mail.message, "confirm"))
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
    run.leave_after_part_one(emails[:leave])
    return run


# -- the cases ---------------------------------------------------------------------------------


def test_worker_killed_mid_send(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """kill -9 of the worker's process group while part 2 is going out; a new worker takes over."""
    run = begin("kill9", stack, fault_smtp, fleet)
    fault_smtp.handler.data_delay = 0.05  # sending takes a little time, so the kill lands in it
    run.wait_part(2, 4)
    fleet.kill9(run.worker)
    run.note(f"killed worker at part-2 count {run.parts(2)}")
    fault_smtp.handler.calm()
    time.sleep(1)
    run.worker = fleet.start(run.env)
    run.finish(report_line)


def test_broker_flushed_then_restarted(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """FLUSHALL in the middle of the run; later the broker is killed and started again.

    The worker must ride out both on its own (newsletter/kombu_compat.py), without a restart.
    """
    run = begin("broker", stack, fault_smtp, fleet)
    run.wait_part(2, 3)
    stack.broker.flushall()
    run.note(f"FLUSHALL at {fault_smtp.count()} messages")
    run.expect_recovery("FLUSHALL")
    run.wait_part(3, 3)
    stack.broker.kill()
    run.note(f"broker killed at {fault_smtp.count()} messages")
    time.sleep(3)
    stack.broker.start()
    run.note("broker started again")
    run.expect_recovery("the broker restart")
    run.finish(report_line)


def test_smtp_server_down_for_a_while(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """The SMTP server goes away for 6 s and comes back on the same port."""
    run = begin("smtp-down", stack, fault_smtp, fleet)
    run.wait_part(2, 3)
    fault_smtp.stop()
    run.note(f"SMTP stopped at part-2 count {run.parts(2)}")
    time.sleep(6)
    fault_smtp.start()
    run.note("SMTP back")
    run.finish(report_line)


def test_smtp_random_transient_errors(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """30 % of RCPTs and of DATA replies are 421 or 451 for 8 s."""
    run = begin("smtp-4xx", stack, fault_smtp, fleet)
    fault_smtp.handler.rcpt_fault_rate = 0.3
    fault_smtp.handler.data_fault_rate = 0.3
    time.sleep(8)
    fault_smtp.handler.calm()
    run.note("4xx stopped")
    run.finish(report_line)


def test_smtp_hangs_past_the_timeout(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """A few messages are stored but answered only after the client's timeout (uncertain)."""
    run = begin("smtp-hang", stack, fault_smtp, fleet)
    handler = fault_smtp.handler
    handler.hang_seconds = SMTP_TIMEOUT + 1.5
    # The next three messages hang, whichever they are: a random choice among the few that
    # pass in the window could pick none on a slow machine, and the case would prove nothing.
    handler.hang_limit = 3
    handler.hang_rate = 1.0
    fault_smtp.wait_count(fault_smtp.count() + 5, 40, "messages after the hangs began")
    handler.calm()
    run.note(f"{handler.hangs} hangs injected")
    report = run.finish(report_line)
    assert handler.hangs >= 1 and report.uncertain >= 1


def test_smtp_refuses_some_addresses_with_550(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """After part 1, three addresses are refused with 550: they fail, bounce, get nothing more."""
    run = begin("smtp-550", stack, fault_smtp, fleet)
    targets = run.emails[-3:]
    for email in targets:
        fault_smtp.wait_part_for(email, 1)
        fault_smtp.handler.refuse[email] = "550 5.1.1 No such user here"
    run.finish(report_line, Expectations(active=set(), bounced=set(targets), allow_failed=True))
    with db.session() as session:
        open_enrollments = session.scalar(
            select(func.count(Enrollment.id))
            .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
            .where(
                Subscriber.status == SubscriberStatus.BOUNCED,
                Enrollment.status == EnrollmentStatus.ACTIVE,
            )
        )
    # A bounce ends the series in the same transaction, with its reason.
    assert open_enrollments == 0


def test_relay_refuses_the_sender(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """The relay refuses MAIL FROM (550, then 530) for a while: nobody is suppressed, sending
    pauses, and resumes by itself when the relay accepts again; everyone gets every part."""
    run = begin("relay-refuses", stack, fault_smtp, fleet)
    run.wait_part(2, 3)
    for reply in ("550 5.7.1 Sender address rejected: not owned by user", "530 5.7.0 Auth needed"):
        fault_smtp.handler.mail_reply = reply
        time.sleep(2.5)
    fault_smtp.handler.mail_reply = None
    run.note(f"MAIL FROM refused for 5 s at part-2 count {run.parts(2)}")
    run.expect_recovery("the relay refused the sender")
    run.finish(report_line)
    with db.session() as session:
        suppressed = set(session.scalars(select(Suppression.email)))
        bounced = session.scalar(
            select(func.count(Subscriber.id)).where(Subscriber.status == SubscriberStatus.BOUNCED)
        )
    assert suppressed == {BLOCKED} and bounced == 0


def test_relay_rejects_every_recipient(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """Every RCPT is refused as an unknown user: the bounce breaker holds sending after a few,
    instead of suppressing the list; the operator lifts those and resumes; all parts arrive."""
    run = begin("reject-all", stack, fault_smtp, fleet, BREAKER_WINDOW="10", BREAKER_SHARE="0.2")
    run.wait_part(2, 3)
    since = clock.now()
    fault_smtp.handler.rcpt_reply = "550 5.1.1 <x>: Recipient address rejected: User unknown"

    def held() -> bool:
        with db.session() as session:
            return breaker.active_trip(session) is not None

    deadline = time.monotonic() + 30
    while not db_retry(held) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert db_retry(held), "the breaker did not trip"
    time.sleep(2)  # nothing more is refused while sending holds
    refused = {a for _, a, reply in fault_smtp.handler.rcpts if reply.startswith("550")}
    with db.session() as session:
        bounced = set(
            session.scalars(
                select(Subscriber.email).where(Subscriber.status == SubscriberStatus.BOUNCED)
            )
        )
    run.note(f"breaker tripped after {len(refused)} refused addresses; {len(bounced)} bounced")
    # Each of the two pool processes trips at its third refusal in ten sends.
    assert 0 < len(bounced) <= 6 and len(refused) <= 6
    fault_smtp.handler.rcpt_reply = None
    runner = run.app.test_cli_runner()
    lifted = runner.invoke(args=["suppressions", "lift", "--since", since.isoformat()])
    assert lifted.exit_code == 0 and f"{len(bounced)} lifted" in lifted.output, lifted.output
    assert runner.invoke(args=["resume"]).exit_code == 0
    run.finish(report_line)


def test_postgres_connections_killed(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """pg_terminate_backend on every connection of the test database, again and again for 4 s."""
    if stack.pg_database is None:
        pytest.skip("PostgreSQL only")
    run = begin("pg-kill", stack, fault_smtp, fleet)
    fault_smtp.handler.data_delay = 0.05  # sending (and its transactions) take a little time
    run.wait_part(2, 3)
    rounds = killed = 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        killed += terminate_backends(PG_ADMIN_URL, stack.pg_database)
        rounds += 1
        time.sleep(0.2)
    fault_smtp.handler.calm()
    run.note(f"terminated {killed} backends in {rounds} rounds")
    run.finish(report_line)


def _unsubscribe_some(run: Run, find: Callable[[], list[int]], count: int) -> list[str]:
    """POST one-click unsubscribes for up to `count` people that `find` names, as they show up."""
    targets: list[str] = []
    deadline = time.monotonic() + 20
    while len(targets) < count and time.monotonic() < deadline:
        found = set(find())
        for email in run.emails:
            if email in run.left or email in targets:
                continue
            if run.subscriber_id(email) in found:
                run.unsubscribe(email)
                targets.append(email)
                break
        else:
            time.sleep(0.02)
    return targets


def test_unsubscribe_while_claimed(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """One-click unsubscribe of people whose mail is claimed right now: nothing after the POST."""
    run = begin("unsub-claimed", stack, fault_smtp, fleet)
    fault_smtp.handler.data_delay = 0.25  # claims are held while a batch waits on slow replies
    run.wait_part(2, 1)
    targets = _unsubscribe_some(run, claimed_subscribers, 3)
    fault_smtp.handler.calm()
    run.note(f"unsubscribed while claimed: {targets}")
    assert targets, "no claimed delivery was seen in 20 s"
    run.finish(report_line)


def test_unsubscribe_while_in_flight(
    stack: Stack, fault_smtp: FaultSmtp, fleet: Fleet, report_line: Callable[[str], None]
) -> None:
    """As above, for mail whose SMTP conversation has begun (a relay slow to answer RCPT)."""
    run = begin("unsub-in-flight", stack, fault_smtp, fleet)
    fault_smtp.handler.rcpt_delay = 0.3
    fault_smtp.handler.data_delay = 0.1
    run.wait_part(2, 1)
    targets = _unsubscribe_some(run, in_flight_subscribers, 3)
    fault_smtp.handler.calm()
    run.note(f"unsubscribed while in flight: {targets}")
    assert targets, "no delivery in flight was seen in 20 s"
    run.finish(report_line)


def test_reaped_claim_is_not_sent_twice(
    stack: Stack, fault_smtp: FaultSmtp, report_line: Callable[[str], None]
) -> None:
    """A batch outlives its claim (slow relay, backlog in the queue): at most a counted copy.

    The interleavings a real run produces by chance, made deterministic with the services:
    worker A holds claimed ids; a dispatch tick reaps and re-claims them; worker B sends them.
    (1) B does so before A began the message: A, whose clock has passed its claim's expiry
    too, must leave it alone. (2) B does so while A is in its SMTP conversation: both copies
    go, and the reaper must have counted an uncertain one. A's attempt begins just before its
    MAIL FROM, so in (1) the reaper finds nothing begun and counts nothing: exactly the one
    real duplicate is counted.
    """
    app = make_app({**stack.env, "DRIP_DAY_SECONDS": "86400"})  # part 2 is not due today
    with db.transaction() as session:
        ensure_seed(session)
    runtime = app.extensions["newsletter"]
    assert isinstance(runtime, Runtime)
    timeout = runtime.settings.claim_timeout_seconds

    def activate(email: str) -> list[int]:
        """A confirmed subscriber; returns worker A's batch, claimed now."""
        now = clock.now()
        with db.transaction() as session:
            subscriptions.signup(session, subscriptions.SignupRequest(email=email), now)
        with db.transaction() as session:
            sub = session.scalars(select(Subscriber).where(Subscriber.email == email)).one()
            subscriptions.confirm(session, sub.id, sub.email, now, 86400)
        with db.transaction() as session:
            return claims.claim_due(session, now, 50)

    def claim_of(batch: list[int]) -> datetime:
        with db.session() as session:
            claims = set(session.scalars(select(Delivery.claimed_at).where(Delivery.id.in_(batch))))
        assert len(claims) == 1
        claim = claims.pop()
        assert claim is not None
        return claim

    def worker_b_after_the_timeout() -> None:
        handed: list[tuple[list[int], datetime]] = []
        dispatch.dispatch(
            db.session,
            clock.now() + timedelta(seconds=timeout + 1),  # the first tick after the timeout
            dispatch_batch_size=50,
            send_batch_size=50,
            claim_timeout_seconds=timeout,
            enqueue=lambda ids, claim: handed.append((ids, claim)),
        )
        assert handed, "the reaper did not return the claims"
        for ids, claim in handed:
            sending.deliver_batch(
                db.engine,
                runtime.composer,
                SmtpTransport(runtime.settings),
                ids,
                clock.now,
                runtime.policy,
                claim=claim,
            )

    class WorkerA(SmtpTransport):
        """A's connection; B runs once, as A's first message is about to go out."""

        def __init__(self, settings: Any, *, in_conversation: bool) -> None:
            super().__init__(settings)
            self.in_conversation = in_conversation
            self.fired = False

        def clock(self) -> datetime:  # A lives through the same timeout as B
            shift = timedelta(seconds=timeout + 1) if self.fired else timedelta(0)
            return clock.now() + shift

        def before_send(self) -> None:  # A has not begun the message yet
            if not self.in_conversation and not self.fired:
                self.fired = True
                worker_b_after_the_timeout()

        def send_data(self, sender: str, recipients: Iterable[str], payload: bytes) -> None:
            if self.in_conversation and not self.fired:
                self.fired = True
                worker_b_after_the_timeout()
            super().send_data(sender, recipients, payload)

    with app.app_context():
        for email, in_conversation in (("r1@example.org", False), ("r2@example.org", True)):
            batch = activate(email)
            worker_a = WorkerA(runtime.settings, in_conversation=in_conversation)
            claim = claim_of(batch)
            sending.deliver_batch(
                db.engine,
                runtime.composer,
                worker_a,
                batch,
                worker_a.clock,
                runtime.policy,
                claim=claim,
                claim_expires=claim + timedelta(seconds=0.9 * timeout),
                hooks=sending.Hooks(before_send=worker_a.before_send),
            )
            assert worker_a.fired
    report = check_copies(f"reaped-claim[{stack.name}]", fault_smtp)
    report_line(report.line())
    assert not report.problems, "\n".join(report.problems)
    assert len(fault_smtp.sink.to("r1@example.org")) == 1
    assert len(fault_smtp.sink.to("r2@example.org")) == 2 and report.uncertain == 1


def test_clock_jumps_forward(
    stack: Stack,
    fault_smtp: FaultSmtp,
    fleet: Fleet,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    """The shared clock jumps 3 drip days ahead mid-run: no two parts closer than half a day."""
    offset_file = tmp_path / "clock-offset"
    run = begin("clock-jump", stack, fault_smtp, fleet, CLOCK_OFFSET_FILE=str(offset_file))
    run.wait_part(2, 3)
    offset_file.write_text(str(3 * DAY))
    run.note(f"clock +{3 * DAY:g}s at {fault_smtp.count()} messages")
    run.finish(report_line, Expectations(active=set(), min_gap_seconds=0.5 * DAY))
