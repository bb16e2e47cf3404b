"""Sending claimed deliveries: re-check, render, send, record, schedule what follows.

A worker sends a batch of claimed ids over its one SMTP connection and one database
connection. The batch is loaded and checked in one transaction. Then each message costs one
short transaction before its SMTP conversation, which records the previous message's outcome
and marks this one's attempt, so a crash loses at most the outcome of the message in flight
(the counted "uncertain" window), never a batch. Each message is built just before it goes,
from a step rendered once per process.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, bindparam, select, update
from sqlalchemy.orm import Session, joinedload, selectinload

from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    Sequence,
    Step,
    Subscriber,
    SubscriberStatus,
    Suppression,
    table_of,
)
from newsletter.services import drip
from newsletter.services.compose import Composer, Outgoing
from newsletter.services.mailer import SendError, SmtpTransport
from newsletter.services.mime import HeaderError
from newsletter.services.policy import Outcome, Policy
from newsletter.services.schedule import REAL_DAY

log = logging.getLogger(__name__)

_D = table_of(Delivery)
_S = table_of(Subscriber)
_E = table_of(Enrollment)

_LOAD = (
    select(
        _D.c.id,
        _D.c.kind,
        _D.c.state,
        _D.c.claimed_at,
        _D.c.due_at,
        _D.c.created_at,
        _D.c.message_id,
        _D.c.step_id,
        _D.c.enrollment_id,
        _D.c.subscriber_id,
        _S.c.email,
        _S.c.first_name,
        _S.c.time_zone,
        _S.c.status.label("subscriber_status"),
        _E.c.status.label("enrollment_status"),
        _E.c.started_at,
    )
    .join(_S, _S.c.id == _D.c.subscriber_id)
    .outerjoin(_E, _E.c.id == _D.c.enrollment_id)
    .where(_D.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_D.c.id)
)
_MARK = (
    update(_D)
    .where(_D.c.id.in_(bindparam("ids", expanding=True)), _D.c.state == DeliveryState.CLAIMED)
    .values(attempts=_D.c.attempts + 1, attempted_at=bindparam("now"))
    .returning(_D.c.id)
)
_MARK_CLAIM = _MARK.where(_D.c.claimed_at == bindparam("claim"))
_RELEASE = (
    update(_D)
    .where(_D.c.id.in_(bindparam("ids", expanding=True)), _D.c.state == DeliveryState.CLAIMED)
    .values(state=DeliveryState.SCHEDULED, claimed_at=None)
)
# Marked but never sent (the error brake stopped the group): back to the queue, unmarked.
_UNMARK = (
    update(_D)
    .where(_D.c.id.in_(bindparam("ids", expanding=True)), _D.c.state == DeliveryState.CLAIMED)
    .values(
        state=DeliveryState.SCHEDULED,
        claimed_at=None,
        attempted_at=None,
        attempts=_D.c.attempts - 1,
    )
)
# The server accepted the message: record that even if an unsubscribe or the reaper touched
# the row meanwhile, because it is the truth.
_SENT = (
    update(_D)
    .where(_D.c.id == bindparam("d_id"))
    .values(
        state=DeliveryState.SENT,
        sent_at=bindparam("now"),
        message_id=bindparam("mid"),
        last_error=None,
    )
)
_SKIP = (
    update(_D)
    .where(_D.c.id == bindparam("d_id"))
    .values(state=DeliveryState.SKIPPED, last_error=bindparam("reason"))
)
_MOVE = (
    update(_D)
    .where(_D.c.id == bindparam("d_id"))
    .values(state=DeliveryState.SCHEDULED, due_at=bindparam("due"), claimed_at=None)
)


@dataclass(slots=True)
class Job:
    """One claimed delivery with what sending it needs, loaded with its batch."""

    delivery_id: int
    kind: DeliveryKind
    subscriber_id: int
    email: str
    first_name: str | None
    time_zone: str
    message_id: str
    step: Step | None = None
    sequence: Sequence | None = None
    follow: drip.FollowUp | None = None

    @property
    def id(self) -> int:
        """The subscriber's id: a Job is also the Recipient the composer addresses."""
        return self.subscriber_id


def _skip_reason(row: Row[Any], suppressed: set[str]) -> str | None:
    """None when the delivery may go out, else why it must be skipped."""
    status = SubscriberStatus(row.subscriber_status)
    if row.email in suppressed:
        return "address is suppressed"
    if row.kind == DeliveryKind.CONFIRM:
        return None if status is SubscriberStatus.PENDING else "no longer pending"
    if status is not SubscriberStatus.ACTIVE:
        return f"subscriber is {status.value}"
    if row.enrollment_status != EnrollmentStatus.ACTIVE:
        return "enrollment is not active"
    return None


def _reschedule_at(
    step: Step, due_at: datetime, time_zone: str, now: datetime, policy: Policy
) -> datetime | None:
    """For a step outside its send window, or too late: when it should go instead.

    The catch-up rule: a step late by less than the grace goes now (inside the window); a later
    one waits for the next window, so an outage never produces a burst of parts at once.
    Windows only exist with real days. The first part answers the person's own click on the
    confirmation link, so it goes at once whatever the hour.
    """
    if policy.day_seconds != REAL_DAY or step.day_offset == 0:
        return None
    window = step.sequence.window
    if not window.contains(now, time_zone):
        return window.next_opening(now, time_zone)
    if now - due_at > policy.catch_up_grace:
        return window.next_opening(now, time_zone)
    return None


def _steps(session: Session, step_ids: set[int]) -> dict[int, Step]:
    """The batch's steps with their sequences and sibling steps (a few rows per batch)."""
    if not step_ids:
        return {}
    steps = session.scalars(
        select(Step)
        .where(Step.id.in_(step_ids))
        .options(joinedload(Step.sequence).selectinload(Sequence.steps))
    ).unique()
    return {step.id: step for step in steps}


def _confirm_sequence(session: Session, subscriber_id: int) -> Sequence | None:
    """The sequence a pending subscriber signed up for (named in the confirmation mail)."""
    return session.scalars(
        select(Sequence)
        .join(Enrollment, Enrollment.sequence_id == Sequence.id)
        .where(Enrollment.subscriber_id == subscriber_id)
        .order_by(Enrollment.id)
        .options(selectinload(Sequence.steps))
        .limit(1)
    ).first()


def _prepare(
    conn: Connection,
    composer: Composer,
    ids: list[int],
    now: datetime,
    policy: Policy,
    claim: datetime | None,
) -> tuple[list[Job], Counter[Outcome]]:
    """Load and check a batch in one transaction: the jobs to send, and what was settled."""
    jobs: list[Job] = []
    settled: Counter[Outcome] = Counter()
    with conn.begin():
        rows = conn.execute(_LOAD, {"ids": ids}).all()
        session = Session(bind=conn)
        mine = [
            r
            for r in rows
            if r.state == DeliveryState.CLAIMED and (claim is None or r.claimed_at == claim)
        ]
        # Rows claimed again since (after the reaper returned them) belong to another task.
        not_mine = len(ids) - len(mine)
        emails = {r.email for r in mine}
        suppressed = set(
            session.scalars(select(Suppression.email).where(Suppression.email.in_(emails)))
        )
        steps = _steps(session, {r.step_id for r in mine if r.step_id is not None})
        skips: list[dict[str, object]] = []
        moves: list[dict[str, object]] = []
        for row in mine:
            reason = _skip_reason(row, suppressed)
            if reason is not None:
                skips.append({"d_id": row.id, "reason": reason})
                continue
            job = Job(
                row.id,
                DeliveryKind(row.kind),
                row.subscriber_id,
                row.email,
                row.first_name,
                row.time_zone,
                # The same Message-ID on every attempt, so a receiver can drop a copy of a mail
                # that did arrive before (a retry after an uncertain reply).
                row.message_id or composer.message_id(row.id, row.created_at),
            )
            if job.kind is DeliveryKind.CONFIRM:
                job.sequence = _confirm_sequence(session, row.subscriber_id)
                jobs.append(job)
                continue
            step = steps[row.step_id]
            later = _reschedule_at(step, row.due_at, row.time_zone, now, policy)
            if later is not None:
                log.info("delivery %d moved to the next send window at %s", row.id, later)
                moves.append({"d_id": row.id, "due": later})
                continue
            job.step, job.sequence = step, step.sequence
            job.follow = drip.follow_up(
                enrollment_id=row.enrollment_id,
                subscriber_id=row.subscriber_id,
                started_at=row.started_at or row.created_at,
                time_zone=row.time_zone,
                window=step.sequence.window,
                step=step,
                steps=step.sequence.steps,
            )
            jobs.append(job)
        if skips:
            conn.execute(_SKIP, skips)
        if moves:
            conn.execute(_MOVE, moves)
        session.close()
    for outcome, count in (
        (Outcome.NOT_CLAIMED, not_mine),
        (Outcome.SKIPPED, len(skips)),
        (Outcome.RESCHEDULED, len(moves)),
    ):
        if count:
            settled[outcome] = count
    return jobs, settled


def _build(composer: Composer, job: Job, now: datetime) -> Outgoing:
    if job.kind is DeliveryKind.CONFIRM:
        rendered = composer.confirmation(job, job.sequence)
        return composer.wire(rendered, job, now, message_id=job.message_id)
    step, sequence = job.step, job.sequence
    assert step is not None and sequence is not None
    url = composer.unsubscribe_url(job.subscriber_id)
    rendered = composer.step(job, step, sequence, len(sequence.steps), unsubscribe_url=url)
    return composer.wire(
        rendered,
        job,
        now,
        list_id=composer.list_id(sequence),
        unsubscribe_url=url,
        message_id=job.message_id,
    )


@dataclass(slots=True)
class Accepted:
    """A message the server accepted, recorded with the next group's transaction."""

    job: Job
    at: datetime


def _record_sent(conn: Connection, accepted: list[Accepted], policy: Policy) -> None:
    """Record accepted messages and schedule what follows each.

    The delivery row is the record of a sent mail (state, sent_at, Message-ID); the events
    log keeps what the rows cannot show (bounces, uncertain outcomes, unsubscribes), so it
    does not grow by a row per mail.
    """
    conn.execute(
        _SENT, [{"d_id": a.job.delivery_id, "now": a.at, "mid": a.job.message_id} for a in accepted]
    )
    follows = [(a.job.follow, a.at) for a in accepted if a.job.follow is not None]
    if follows:
        drip.schedule_next(conn, follows, accepted[-1].at, policy.day_seconds)


def _mark_attempts(
    conn: Connection, ids: list[int], now: datetime, claim: datetime | None
) -> set[int]:
    """Record that sending begins, for the rows still claimed; the others must be dropped.

    This is the last look before the SMTP conversations: an unsubscribe that landed while the
    batch was being sent has skipped its row, and wins.
    """
    if not ids:
        return set()
    params = {"ids": ids, "now": now, "claim": claim}
    return set(conn.scalars(_MARK if claim is None else _MARK_CLAIM, params))


def _hard_bounce(session: Session, delivery: Delivery, detail: str, now: datetime) -> None:
    subscriber = delivery.subscriber
    if session.scalar(select(Suppression.id).where(Suppression.email == subscriber.email)) is None:
        session.add(
            Suppression(email=subscriber.email, reason="bounce", detail=detail, created_at=now)
        )
    subscriber.status = SubscriberStatus.BOUNCED
    drip.stop_enrollments(session, subscriber.id, now)
    drip.skip_pending(session, subscriber.id, reason="address bounced", except_id=delivery.id)
    session.add(
        Event(
            subscriber_id=subscriber.id,
            delivery_id=delivery.id,
            kind="bounce",
            data={"detail": detail[:500]},
            created_at=now,
        )
    )


def _record_failure(
    conn: Connection, job: Job, error: SendError, now: datetime, policy: Policy
) -> Outcome:
    delivery_id = job.delivery_id
    with conn.begin(), Session(bind=conn) as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        delivery.last_error = str(error)[:2000]
        delivery.message_id = job.message_id
        if error.ambiguous:
            # The counted window: the server may have the message. It is retried (with the same
            # Message-ID) rather than dropped; the event makes every such case visible.
            session.add(
                Event(
                    subscriber_id=delivery.subscriber_id,
                    delivery_id=delivery.id,
                    kind="uncertain",
                    data={"error": str(error)[:500]},
                    created_at=now,
                )
            )
        if delivery.state is DeliveryState.SKIPPED and not error.permanent:
            # An unsubscribe landed during the conversation: nothing is left to retry.
            outcome = Outcome.SKIPPED
        elif error.permanent:
            delivery.state = DeliveryState.FAILED
            _hard_bounce(session, delivery, str(error), now)
            log.warning("delivery %d failed permanently: %s", delivery_id, error)
            outcome = Outcome.FAILED
        elif now - (delivery.first_due_at or delivery.due_at) > policy.give_up_after:
            delivery.state = DeliveryState.FAILED
            log.error(
                "delivery %d gave up after %d attempts: %s", delivery_id, delivery.attempts, error
            )
            outcome = Outcome.FAILED
        else:
            delivery.state = DeliveryState.RETRY
            delivery.due_at = now + policy.retry_delay(delivery.attempts)
            log.warning(
                "delivery %d will be retried at %s: %s", delivery_id, delivery.due_at, error
            )
            outcome = Outcome.RETRY
        session.flush()
    return outcome


def _record_unbuildable(conn: Connection, job: Job, error: Exception) -> None:
    # Bad content (a header with a line break, an address that is not ASCII) will not get
    # better by retrying: the delivery fails, visibly, and the rest of the batch goes on.
    log.error("delivery %d cannot be built: %s", job.delivery_id, error)
    conn.execute(
        update(_D)
        .where(_D.c.id == job.delivery_id)
        .values(state=DeliveryState.FAILED, last_error=f"cannot build the message: {error}")
    )


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


class _Batch:
    """The send loop of one batch over one database connection and one SMTP connection.

    Messages go in groups: one transaction records the previous group's accepted messages
    and marks this group's attempts, then the group is sent. A crash loses the outcome of at
    most one group (its messages are offered again and counted as uncertain); with a group of
    one, only the message in flight.
    """

    def __init__(
        self,
        conn: Connection,
        composer: Composer,
        transport: SmtpTransport,
        policy: Policy,
        hooks: Hooks,
    ) -> None:
        self.conn = conn
        self.composer = composer
        self.transport = transport
        self.policy = policy
        self.hooks = hooks
        self.accepted: list[Accepted] = []
        self.outcomes: Counter[Outcome] = Counter()
        self.stopped = False

    def _outcome(self, outcome: Outcome) -> None:
        self.outcomes[outcome] += 1
        self.hooks.on_outcome(outcome)

    def flush(self) -> None:
        """Record the accepted messages not yet recorded, in a transaction of their own."""
        if self.accepted:
            with self.conn.begin():
                _record_sent(self.conn, self.accepted, self.policy)
            self.accepted = []

    def release(self, marked: list[int], unmarked: list[int]) -> None:
        """Give unsent deliveries back to the queue (the error brake), marked ones unmarked."""
        self.stopped = True
        with self.conn.begin():
            if self.accepted:
                _record_sent(self.conn, self.accepted, self.policy)
                self.accepted = []
            released = self.conn.execute(_UNMARK, {"ids": marked}).rowcount if marked else 0
            if unmarked:
                released += self.conn.execute(_RELEASE, {"ids": unmarked}).rowcount
        log.warning("error brake: released %d unsent deliveries of a batch", released)

    def send_group(
        self, group: list[Job], clock: Callable[[], datetime], claim: datetime | None
    ) -> None:
        """Build, mark and send one group; the accepted ones are recorded with the next."""
        now = clock()
        built: list[tuple[Job, Outgoing]] = []
        broken: list[tuple[Job, Exception]] = []
        for job in group:
            try:
                built.append((job, _build(self.composer, job, now)))
            except (HeaderError, UnicodeError) as exc:
                broken.append((job, exc))
        with self.conn.begin():
            if self.accepted:
                _record_sent(self.conn, self.accepted, self.policy)
                self.accepted = []
            for job, problem in broken:
                _record_unbuildable(self.conn, job, problem)
            marked = _mark_attempts(self.conn, [job.delivery_id for job, _ in built], now, claim)
        for _ in broken:
            self._outcome(Outcome.FAILED)
        pending = [(job, out) for job, out in built if job.delivery_id in marked]
        for _ in range(len(built) - len(pending)):
            self._outcome(Outcome.SKIPPED)
        for index, (job, outgoing) in enumerate(pending):
            if self.hooks.should_stop():
                self.release([j.delivery_id for j, _ in pending[index:]], [])
                return
            self.hooks.before_send()
            try:
                self.transport.send_data(outgoing.sender, outgoing.recipients, outgoing.data)
            except SendError as error:
                self._outcome(_record_failure(self.conn, job, error, clock(), self.policy))
                continue
            # The unavoidable window: the server has the message. A crash before it is
            # recorded leaves the row claimed; the reaper offers it again and counts it.
            self.accepted.append(Accepted(job, clock()))
            self._outcome(Outcome.SENT)


def deliver_batch(
    engine: Engine,
    composer: Composer,
    transport: SmtpTransport,
    delivery_ids: Iterable[int],
    clock: Callable[[], datetime],
    policy: Policy,
    *,
    claim: datetime | None = None,
    group_size: int = 1,
    hooks: Hooks | None = None,
) -> Counter[Outcome]:
    """Send several claimed deliveries over one connection; never raises for mail errors.

    `claim` is the claim time the dispatcher gave the batch: rows claimed again since (after the
    reaper returned them) belong to another task and are left alone. `group_size` mails are
    recorded per transaction (see `_Batch`).
    """
    hooks = hooks or Hooks()
    with engine.connect() as conn:  # one connection: no pool checkout per transaction
        jobs, settled = _prepare(conn, composer, list(delivery_ids), clock(), policy, claim)
        batch = _Batch(conn, composer, transport, policy, hooks)
        try:
            for start in range(0, len(jobs), group_size):
                if batch.stopped or hooks.should_stop():
                    batch.release([], [job.delivery_id for job in jobs[start:]])
                    break
                batch.send_group(jobs[start : start + group_size], clock, claim)
        except BaseException:
            try:
                batch.flush()
            except Exception:  # noqa: BLE001 - the first error is the one to raise
                log.exception("accepted messages could not be recorded; the reaper will count them")
            raise
        batch.flush()
    return settled + batch.outcomes


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
