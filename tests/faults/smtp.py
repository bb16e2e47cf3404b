"""The SMTP server of the fault suite: it stores what it accepts and misbehaves on request.

`FaultSmtp` runs the conftest sink's handler with faults added (`FaultHandler`): random 4xx
replies to RCPT or DATA, slow and hanging replies, refusals of chosen addresses; the test can
stop it and start it again on the same port. Every stored message is kept as an `Arrival`
with the wall time its final dot arrived, which is what the end check judges.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property
from typing import Any

from aiosmtpd.controller import Controller

from tests.helpers.mailparse import PART, text_of
from tests.helpers.ports import free_port
from tests.helpers.smtp import SinkHandler, SmtpSink


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
        elif self.rcpt_reply:
            reply = self.rcpt_reply
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
