"""Sending a batch of claimed deliveries over one SMTP connection and one database connection.

The batch is loaded and checked in one transaction (`batch_load`). Its mail then goes in
groups of `group_size`, and one transaction per group (`recording.advance`) records the group
before as sent, schedules what follows each of its mails, and marks the next group's
attempts: the last look before their SMTP conversations. That transaction runs on a database
thread while this thread holds the SMTP conversations of the current group, so the database is
off the critical path: a worker sends at the pace of the SMTP server.

A crash (kill -9, power) can lose the outcome of at most two groups: the one being sent and
the one being recorded. Their rows stay claimed with their attempts marked; the reaper offers
them again and records each as `uncertain`, the window no engine can close. Each message is
built just before its group goes, from a step rendered once per process.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from newsletter.models import DeliveryKind
from newsletter.services import recording
from newsletter.services.admin_templates import AdminTemplateError
from newsletter.services.batch_load import Job, prepare
from newsletter.services.compose import Composer, Outgoing
from newsletter.services.mailer import SendError, SmtpTransport
from newsletter.services.mime import HeaderError
from newsletter.services.policy import Outcome, Policy
from newsletter.services.recording import Accepted

log = logging.getLogger(__name__)
T = TypeVar("T")


def _build(composer: Composer, job: Job, now: datetime) -> Outgoing:
    if job.kind is DeliveryKind.CONFIRM:
        rendered = composer.confirmation(job, job.sequence)
        return composer.wire(rendered, job, now, message_id=job.message_id)
    step, sequence = job.step, job.sequence
    assert step is not None and sequence is not None
    return composer.part(job, step, sequence, now, message_id=job.message_id)


@dataclass
class Hooks:
    """What flow control plugs into a batch (no-ops by default).

    `before_send` runs before each message (the rate limiter waits there); when `should_stop`
    turns true (the error brake) the rest of the batch goes back, unsent, to the queue;
    `on_outcome` hears every message's outcome.
    """

    should_stop: Callable[[], bool] = lambda: False
    before_send: Callable[[], None] = lambda: None
    on_outcome: Callable[[Outcome], None] = lambda _: None


class _Brake(Exception):
    """Sending must stop mid-group; `unsent` were marked, not sent; `reason` says why."""

    def __init__(self, unsent: list[int], reason: str) -> None:
        super().__init__(reason)
        self.unsent = unsent
        self.reason = reason


@dataclass
class _Group:
    """One group: its messages, and the transaction that marks them and records `recording`."""

    built: list[tuple[Job, Outgoing]]
    marked: Future[set[int]]
    recording: list[Accepted]


class _Batch:
    """The send loop of one batch; every database call runs on the one database thread."""

    def __init__(
        self,
        db: ThreadPoolExecutor,
        engine: Engine,
        conn: Connection,
        composer: Composer,
        transport: SmtpTransport,
        clock: Callable[[], datetime],
        policy: Policy,
        claim: datetime | None,
        claim_expires: datetime | None,
        hooks: Hooks,
    ) -> None:
        self.db = db
        self.engine = engine
        self.claim_expires = claim_expires
        self.conn = conn
        self.composer = composer
        self.transport = transport
        self.clock = clock
        self.policy = policy
        self.claim = claim
        self.hooks = hooks
        self.accepted: list[Accepted] = []
        self.outcomes: Counter[Outcome] = Counter()

    def _outcome(self, outcome: Outcome) -> None:
        self.outcomes[outcome] += 1
        self.hooks.on_outcome(outcome)

    def _call(self, fn: Callable[..., T], *args: object) -> T:
        return self.db.submit(fn, self.conn, *args).result()

    def start(self, jobs: list[Job]) -> _Group:
        """Build a group and queue the transaction that records the last one and marks it."""
        now = self.clock()
        built: list[tuple[Job, Outgoing]] = []
        broken: list[tuple[Job, Exception]] = []
        for job in jobs:
            try:
                built.append((job, _build(self.composer, job, now)))
            except (HeaderError, UnicodeError, AdminTemplateError) as exc:
                broken.append((job, exc))
        accepted, self.accepted = self.accepted, []
        marked = self.db.submit(
            recording.advance,
            self.conn,
            accepted,
            broken,
            [job.delivery_id for job, _ in built],
            now,
            self.claim,
            self.policy,
        )
        for _ in broken:
            self._outcome(Outcome.FAILED)
        return _Group(built, marked, accepted)

    def send(self, group: _Group) -> None:
        """Send a started group; raise _Brake with the unsent ids if the brake trips."""
        marked = self.settle(group)
        pending = [(job, out) for job, out in group.built if job.delivery_id in marked]
        for _ in range(len(group.built) - len(pending)):
            self._outcome(Outcome.SKIPPED)  # an unsubscribe or another claim won
        for index, (job, outgoing) in enumerate(pending):
            if self.hooks.should_stop():
                raise _Brake([j.delivery_id for j, _ in pending[index:]], "error brake")
            self.hooks.before_send()
            if self.claim_expires is not None and self.clock() >= self.claim_expires:
                # The reaper may have offered these rows again: sending now could send twice.
                raise _Brake([j.delivery_id for j, _ in pending[index:]], "claim expired")
            try:
                self.transport.send_data(outgoing.sender, outgoing.recipients, outgoing.data)
            except SendError as error:
                outcome = self._call(
                    recording.record_failure, job, error, self.clock(), self.policy
                )
                self._outcome(outcome)
                continue
            # The server has the message: from here until the group is recorded, a crash
            # leaves it to the reaper, which counts it as uncertain.
            self.accepted.append(Accepted(job, self.clock()))
            self._outcome(Outcome.SENT)

    def stop(self, marked: list[int], unmarked: list[int], reason: str) -> None:
        """Record what went, give the rest back to the queue unsent (if still ours)."""
        accepted, self.accepted = self.accepted, []
        released = self._call(
            recording.release, accepted, marked, unmarked, self.claim, self.policy
        )
        log.warning("%s: released %d unsent deliveries of a batch", reason, released)

    def settle(self, group: _Group) -> set[int]:
        """The ids a group's transaction marked; if it failed, its records are kept to retry."""
        try:
            return group.marked.result()
        except BaseException:
            self.accepted = group.recording + self.accepted
            raise

    def flush(self) -> None:
        """Record the accepted messages not yet recorded, on a new connection if need be.

        After a database failure this is the last chance to record mail that went out; a
        dropped connection is replaced once, so a killed backend does not cost duplicates.
        """
        if not self.accepted:
            return
        accepted, self.accepted = self.accepted, []
        args: tuple[object, ...] = (accepted, [], [], self.clock(), self.claim, self.policy)
        try:
            self._call(recording.advance, *args)
        except DBAPIError as exc:
            log.warning("recording sent mail failed (%s); retrying on a new connection", exc)
            with contextlib.suppress(Exception):
                self.db.submit(self.conn.close).result()
            self.conn = self.db.submit(self.engine.connect).result()
            self._call(recording.advance, *args)


def deliver_batch(
    engine: Engine,
    composer: Composer,
    transport: SmtpTransport,
    delivery_ids: Iterable[int],
    clock: Callable[[], datetime],
    policy: Policy,
    *,
    claim: datetime | None = None,
    claim_expires: datetime | None = None,
    group_size: int = 1,
    hooks: Hooks | None = None,
) -> Counter[Outcome]:
    """Send several claimed deliveries; never raises for mail errors.

    `claim` is the claim time the dispatcher gave the batch: rows claimed again since (after the
    reaper returned them) belong to another task and are left alone; from `claim_expires` on
    (the reaper's cutoff) nothing more is sent. `group_size` mails are recorded per
    transaction (see the module docstring).
    """
    hooks = hooks or Hooks()
    with ThreadPoolExecutor(1, thread_name_prefix="newsletter-db") as db:
        # One connection, opened, used and closed on the database thread only.
        conn = db.submit(engine.connect).result()
        try:
            jobs, settled = db.submit(
                prepare, conn, composer, list(delivery_ids), clock(), policy, claim
            ).result()
            batch = _Batch(
                db, engine, conn, composer, transport, clock, policy, claim, claim_expires, hooks
            )
            _run(batch, jobs, group_size)
        finally:
            db.submit(conn.close).result()
    return settled + batch.outcomes


def _run(batch: _Batch, jobs: list[Job], group_size: int) -> None:
    groups = [jobs[i : i + group_size] for i in range(0, len(jobs), group_size)]
    if not groups:
        return
    current = batch.start(groups[0])
    following: _Group | None = None
    try:
        for index in range(len(groups)):
            # The next group is built, and marked on the database thread, while this one is
            # on the wire; that transaction also records the group sent before this one.
            following = batch.start(groups[index + 1]) if index + 1 < len(groups) else None
            try:
                batch.send(current)
            except _Brake as brake:
                marked = brake.unsent
                if following is not None:
                    mine = batch.settle(following)
                    marked += [
                        job.delivery_id for job, _ in following.built if job.delivery_id in mine
                    ]
                later = [job.delivery_id for group in groups[index + 2 :] for job in group]
                batch.stop(marked, later, brake.reason)
                return
            if following is None:
                break
            current = following
    except BaseException:
        try:
            if following is not None and following is not current:
                with contextlib.suppress(BaseException):
                    batch.settle(following)  # its records must not be lost either
            batch.flush()
        except Exception:  # noqa: BLE001 - the first error is the one to raise
            log.exception("accepted messages could not be recorded; the reaper will count them")
        raise
    batch.flush()


def deliver(
    engine: Engine,
    composer: Composer,
    transport: SmtpTransport,
    delivery_id: int,
    clock: Callable[[], datetime],
    policy: Policy,
) -> Outcome:
    """Send one claimed delivery and record the result."""
    outcomes = deliver_batch(engine, composer, transport, [delivery_id], clock, policy)
    return next(iter(outcomes))
