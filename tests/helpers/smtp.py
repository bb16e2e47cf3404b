"""A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message it receives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.helpers.ports import free_port


@dataclass
class SinkHandler:
    """aiosmtpd handler that keeps every message and can refuse chosen recipients."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # each message exactly as received
    refuse: dict[str, str] = field(default_factory=dict)  # address -> SMTP reply
    rcpt_reply: str | None = None  # reply to every RCPT instead of 250
    mail_reply: str | None = None  # reply to MAIL FROM instead of 250, e.g. "550 5.7.1 no"
    data_reply: str | None = None  # reply to DATA instead of 250, e.g. "451 try later"
    cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.lower() in self.refuse:
            return self.refuse[address.lower()]
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        msg = BytesParser(policy=policy.default).parsebytes(envelope.original_content)
        with self.cond:
            self.messages.append(msg)
            self.raw.append(bytes(envelope.original_content))
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.cond.notify_all()
        return "250 Message accepted"


@dataclass
class SmtpSink:
    """A real SMTP server on 127.0.0.1 that tests read mail back from."""

    host: str
    port: int
    handler: SinkHandler

    @property
    def messages(self) -> list[EmailMessage]:
        with self.handler.cond:
            return list(self.handler.messages)

    def to(self, address: str) -> list[EmailMessage]:
        """Messages addressed to `address`, in arrival order."""
        return [m for m in self.messages if address in str(m["To"])]

    def wait_for(
        self, predicate: Callable[[list[EmailMessage]], bool], timeout: float = 60.0
    ) -> list[EmailMessage]:
        """Block until `predicate(messages)` holds; fail the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.handler.cond:
            while not predicate(list(self.handler.messages)):
                left = deadline - time.monotonic()
                if left <= 0:
                    have = [str(m["Subject"]) for m in self.handler.messages]
                    pytest.fail(
                        f"mail did not arrive in {timeout}s; have {len(have)}, last: {have[-5:]}"
                    )
                self.handler.cond.wait(min(left, 0.5))
            return list(self.handler.messages)


@contextmanager
def running_sink() -> Iterator[SmtpSink]:
    """An aiosmtpd server on a free port of 127.0.0.1, stopped on exit."""
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpSink("127.0.0.1", port, handler)
    finally:
        controller.stop()
