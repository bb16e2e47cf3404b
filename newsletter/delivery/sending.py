"""Sending a batch of claimed deliveries over one SMTP connection and two database connections.

The batch is loaded and checked in one transaction (`loading`). Then, for each message:
its attempt begins with one conditional write (`recording.mark`, the last look: a row that an
unsubscribe skipped or another task took over is left alone), it is built, and it goes over
SMTP. The write for the next message runs on its own database thread and connection while
this message's SMTP conversation goes on, so the last look costs no waiting; once it has
committed, an unsubscribe waits for that message's outcome instead of racing it.

Accepted messages are recorded in groups: one transaction (`recording.record`) per
`group_size` mails, or before the next message starts on a slow relay, on a second database
thread and connection, so that a group's recording never delays the next message's mark.
A crash (kill -9, power) can lose the outcome of at most the unrecorded group and the message
on the wire; their rows stay claimed with their attempts begun, and the reaper offers them
again and records each as `uncertain`, the window no engine can close.

Whatever goes wrong with one message (it cannot be built, the server refuses it) fails that
message alone with its reason; the rest of the batch goes on. Sending stops early only for
reasons that concern every message: a pause (the error brake, a relay refusing us), a
breaker hold, or a claim about to expire; the unsent rest goes back to the queue unharmed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from newsletter.delivery import recording
from newsletter.delivery.breaker import BounceBreaker
from newsletter.delivery.loading import Job, prepare
from newsletter.delivery.policy import Outcome, Policy
from newsletter.delivery.recording import Accepted
from newsletter.mail.compose import Composer, Outgoing
from newsletter.mail.transport import SendError, Transport
from newsletter.models import DeliveryKind

log = logging.getLogger(__name__)
T = TypeVar("T")

# An accepted message is recorded within about this long after the server took it (when the
# database thread is free): on a relay that takes a while per message, each one is recorded
# before the next starts, so an unsubscribe's wait for "the mail on the wire" ends as soon as
# that mail's conversation did. A fast relay fills whole groups first.
RECORD_WITHIN_SECONDS = 0.5


def _build(composer: Composer, job: Job, now: datetime) -> Outgoing:
    if job.kind is DeliveryKind.CONFIRM:
        rendered = composer.confirmation(job.addressee, job.sequence)
        return composer.wire(rendered, job.addressee, now, message_id=job.message_id)
    step, sequence = job.step, job.sequence
    assert step is not None and sequence is not None
    return composer.part(
        job.addressee, step, sequence, now, message_id=job.message_id, delivery_id=job.delivery_id
    )


@dataclass
class Hooks:
    """What flow control plugs into a batch (no-ops by default).

    `before_send` runs before each message (the rate limiter waits there); when `should_stop`
    turns true (a pause) the rest of the batch goes back, unsent, to the queue; `on_outcome`
    hears every message's outcome with its detail (a relay refusal's reply, say); `on_hold`
    hears that the bounce breaker tripped, with its reason.
    """

    should_stop: Callable[[], bool] = lambda: False
    before_send: Callable[[], None] = lambda: None
    on_outcome: Callable[[Outcome, str], None] = lambda _outcome, _detail: None
    on_hold: Callable[[str], None] = lambda _reason: None


class _Stop(Exception):
    """Sending stops before the message at `index`; `reason` says why."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


class _Lane:
    """One database connection, used only on its own thread (a Connection is not shared)."""

    def __init__(self, engine: Engine, name: str, *, single_statements: bool = False) -> None:
        self.engine = engine
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"newsletter-{name}")
        self.single_statements = single_statements
        self.conn = self.thread.submit(self._connect).result()

    def _connect(self) -> Connection:
        conn = self.engine.connect()
        if self.single_statements and self.engine.dialect.name == "postgresql":
            # Each statement its own transaction: one round trip instead of BEGIN, the
            # statement and COMMIT (SQLite's writes take their lock at BEGIN, so keep it there).
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        return conn

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Run `fn(conn, *args)` on the lane's thread."""
        return self.thread.submit(fn, self.conn, *args)

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(conn, *args)` on the lane's thread and wait for it."""
        return self.submit(fn, *args).result()

    def reconnect(self) -> None:
        """Replace a connection the database dropped."""
        with contextlib.suppress(Exception):
            self.thread.submit(self.conn.close).result()
        self.conn = self.thread.submit(self._connect).result()

    def close(self) -> None:
        """Close the connection and end the thread."""
        try:
            self.thread.submit(self.conn.close).result()
        finally:
            self.thread.shutdown()


class _Batch:
    """The send loop of one batch: marks on one database lane, everything else on another."""

    def __init__(
        self,
        db: _Lane,
        marker: _Lane,
        composer: Composer,
        transport: Transport,
        clock: Callable[[], datetime],
        policy: Policy,
        claim: datetime | None,
        claim_expires: datetime | None,
        hooks: Hooks,
        group_size: int,
        breaker: BounceBreaker | None,
    ) -> None:
        self.db = db
        self.marker = marker
        self.composer = composer
        self.transport = transport
        self.clock = clock
        self.policy = policy
        self.claim = claim
        self.claim_expires = claim_expires
        self.hooks = hooks
        self.group_size = group_size
        self.breaker = breaker
        self.outcomes: Counter[Outcome] = Counter()
        self.marks: dict[int, Future[bool]] = {}
        self.accepted: list[Accepted] = []
        self.oldest_accepted = 0.0  # time.monotonic() of accepted[0]
        self.last_conversation = 0.0  # seconds the last accepted message's SMTP exchange took
        self.recording: tuple[Future[None], list[Accepted]] | None = None
        self.halt: str | None = None  # the breaker tripped: stop before the next message

    # -- the database lanes ------------------------------------------------------------------

    def _submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        return self.db.submit(fn, *args)

    def _call(self, fn: Callable[..., T], *args: object) -> T:
        return self.db.call(fn, *args)

    def _mark(self, job: Job) -> Future[bool]:
        future = self.marks.get(job.delivery_id)
        if future is None:
            future = self.marker.submit(recording.mark, job.delivery_id, self.clock(), self.claim)
            self.marks[job.delivery_id] = future
        return future

    # -- the loop ----------------------------------------------------------------------------

    def run(self, jobs: list[Job]) -> None:
        """Send every job in order; raise _Stop when sending must stop early."""
        for index, job in enumerate(jobs):
            if self.halt is not None:
                raise _Stop(index, self.halt)
            if self.hooks.should_stop():
                raise _Stop(index, "sending is paused")
            self.hooks.before_send()
            if self.claim_expires is not None and self.clock() >= self.claim_expires:
                # The reaper may offer these rows again: sending now could send twice.
                raise _Stop(index, "claim expired")
            began = self._mark(job)
            if index + 1 < len(jobs):
                # The next message's last look, taken while this one is on the wire.
                self._mark(jobs[index + 1])
            if not began.result():
                del self.marks[job.delivery_id]
                self._outcome(Outcome.SKIPPED, "")  # an unsubscribe or another claim won
                continue
            del self.marks[job.delivery_id]
            self._send(job)
            self._record_when_due()

    def _send(self, job: Job) -> None:
        try:
            outgoing = _build(self.composer, job, self.clock())
        except Exception as exc:  # noqa: BLE001 - any fault of one message fails it alone
            self._call(recording.record_unbuildable, job, exc, self.clock(), self.policy)
            self._outcome(Outcome.FAILED, f"{type(exc).__name__}: {exc}")
            return
        began = time.monotonic()
        try:
            self.transport.send_data(outgoing.sender, outgoing.recipients, outgoing.data)
        except SendError as error:
            outcome = self._call(
                recording.record_failure, job, error, self.clock(), self.policy, self.claim
            )
            self._outcome(outcome, str(error))
            return
        # The server has the message: from here until it is recorded, a crash leaves it to
        # the reaper, which counts it as uncertain.
        self.last_conversation = time.monotonic() - began
        if not self.accepted:
            self.oldest_accepted = time.monotonic()
        self.accepted.append(Accepted(job, self.clock()))
        self._outcome(Outcome.SENT, "")

    def _outcome(self, outcome: Outcome, detail: str) -> None:
        self.outcomes[outcome] += 1
        self.hooks.on_outcome(outcome, detail)
        if self.breaker is not None and self.breaker.record(outcome, self.clock()):
            self._trip()

    def _trip(self) -> None:
        assert self.breaker is not None
        # Outcomes from before an operator's last resume do not count against the relay.
        self.breaker.forget_until(self._call(recording.last_resume))
        reason = self.breaker.reason()
        if reason is None:
            return
        self.breaker.clear()
        if self._call(recording.hold_sending, reason, self.clock()):
            log.error(
                "BOUNCE BREAKER TRIPPED, all sending holds until an operator resumes it "
                "(flask --app web resume): %s",
                reason,
            )
        self.hooks.on_hold(reason)
        self.halt = f"the bounce breaker holds sending: {reason}"

    # -- recording accepted mail ---------------------------------------------------------------

    def _record_when_due(self) -> None:
        if not self.accepted:
            return
        idle = self.recording is None or self.recording[0].done()
        full = len(self.accepted) >= self.group_size
        # Would the oldest wait too long if the next conversation is as slow as the last?
        age = time.monotonic() - self.oldest_accepted + self.last_conversation
        late = idle and age >= RECORD_WITHIN_SECONDS
        if full or late:
            self._settle()
            group, self.accepted = self.accepted, []
            self.recording = (self._submit(recording.record, group, self.policy), group)

    def _settle(self) -> None:
        """Wait for the group being recorded; if that failed, keep its mail to record again."""
        if self.recording is None:
            return
        future, group = self.recording
        self.recording = None
        try:
            future.result()
        except BaseException:
            self.accepted = group + self.accepted
            raise

    def flush(self) -> None:
        """Record the accepted messages not yet recorded, on a new connection if need be.

        After a database failure this is the last chance to record mail that went out; a
        dropped connection is replaced once, so a killed backend does not cost duplicates.
        """
        with contextlib.suppress(Exception):
            self._settle()
        if not self.accepted:
            return
        group, self.accepted = self.accepted, []
        try:
            self._call(recording.record, group, self.policy)
        except DBAPIError as exc:
            log.warning("recording sent mail failed (%s); retrying on a new connection", exc)
            self.db.reconnect()
            self._call(recording.record, group, self.policy)

    def stop(self, jobs: list[Job], stop: _Stop) -> None:
        """Record what was sent; give the unsent rest back to the queue (if still ours)."""
        self._settle()
        rest = jobs[stop.index :]
        marked: list[int] = []
        for job in rest:
            future = self.marks.pop(job.delivery_id, None)
            if future is not None and future.result():
                marked.append(job.delivery_id)
        unmarked = [job.delivery_id for job in rest if job.delivery_id not in marked]
        accepted, self.accepted = self.accepted, []
        released = self._call(
            recording.release, accepted, marked, unmarked, self.claim, self.policy
        )
        if released:
            self.outcomes[Outcome.HELD] += released
        log.warning("%s: released %d unsent deliveries of a batch", stop.reason, released)


def deliver_batch(
    engine: Engine,
    composer: Composer,
    transport: Transport,
    delivery_ids: Iterable[int],
    clock: Callable[[], datetime],
    policy: Policy,
    *,
    claim: datetime | None = None,
    claim_expires: datetime | None = None,
    group_size: int = 1,
    hooks: Hooks | None = None,
    breaker: BounceBreaker | None = None,
) -> Counter[Outcome]:
    """Send several claimed deliveries; never raises for mail errors.

    `claim` is the claim time the dispatcher gave the batch: rows claimed again since (after the
    reaper returned them) belong to another task and are left alone; from `claim_expires` on
    (the reaper's cutoff) nothing more is sent. `group_size` mails are recorded per
    transaction (see the module docstring). `breaker`, this process's bounce breaker, holds
    all sending when too many recent sends were refused.
    """
    hooks = hooks or Hooks()
    db = _Lane(engine, "db")
    try:
        marker = _Lane(engine, "mark", single_statements=True)
        try:
            batch = _Batch(
                db,
                marker,
                composer,
                transport,
                clock,
                policy,
                claim,
                claim_expires,
                hooks,
                group_size,
                breaker,
            )
            jobs, settled = db.call(prepare, composer, list(delivery_ids), clock(), policy, claim)
            _run(batch, jobs)
        finally:
            marker.close()
    finally:
        db.close()
    return settled + batch.outcomes


def _run(batch: _Batch, jobs: list[Job]) -> None:
    try:
        batch.run(jobs)
    except _Stop as stop:
        batch.stop(jobs, stop)
        return
    except BaseException:
        try:
            batch.flush()
        except Exception:  # noqa: BLE001 - the first error is the one to raise
            log.exception("accepted messages could not be recorded; the reaper will count them")
        raise
    batch.flush()
