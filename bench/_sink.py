"""The SMTP sink the delivery benchmarks send into, and the ceiling of raw smtplib into it.

    Sink            an aiosmtpd server in its own process that accepts everything and only
                    counts (messages, bytes, first/last arrival on CLOCK_MONOTONIC, which is
                    system-wide on Linux and so comparable with the producer's clock)
    ceiling()       raw smtplib into the sink: K reused connections in K threads or K
                    processes, or a new connection per message
    synthetic_messages()
                    multipart/alternative messages of a given size, for the ceiling

Everything binds to 127.0.0.1; the sink process stops when asked, when its parent is gone or
at its own deadline, and forked senders are killed in `finally`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import smtplib
import threading
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from bench._common import HOST, free_port
from bench._procs import cpu_seconds

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
