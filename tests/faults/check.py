"""The end check of the fault suite.

`check_outcome` judges a finished run from the mail the SMTP server actually stored, with the
database only naming deliveries (see its docstring for the rules); `check_copies` applies the
duplicate rule alone.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Event,
    Step,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from tests.faults.probes import db_retry, reading, wait_until_quiet
from tests.faults.smtp import Arrival, FaultSmtp

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
