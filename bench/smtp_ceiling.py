"""The physical limit of sending: raw smtplib into a counting aiosmtpd sink, no product code.

N pre-built multipart/alternative (text + HTML) messages of about --size bytes are rendered
before any timing. The sink runs in its own process (it does not share the GIL with the
sender) and only counts messages and bytes. Modes, each repeated --repeat times (median shown):

    1 connection        one reused connection, one thread
    K conns, threads    K reused connections in K threads of this process (--connections)
    K conns, processes  K reused connections in K forked processes (the Celery pool's shape)
    new conn/message    connect, EHLO, MAIL, RCPT, DATA, QUIT for every message

    .venv/bin/python bench/smtp_ceiling.py [--messages 3000] [--size 5000]
        [--connections 2,4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import log, machine, table, wait_for_quiet  # noqa: E402
from bench._sink import CeilingResult, Sink, ceiling, synthetic_messages  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000, help="messages per case (N)")
    parser.add_argument("--size", type=int, default=5000, help="approximate bytes per message")
    parser.add_argument(
        "--connections", default="2,4", help="comma-separated K for the multi-connection cases"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median is shown")
    parser.add_argument(
        "--per-message", type=int, default=1000,
        help="messages for the new-connection-per-message case (slow; 0 skips it)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case run")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load <= this")
    parser.add_argument("--max-wait", type=float, default=120.0, help="...for at most this long")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.connections.split(",") if k.strip()]

    load = wait_for_quiet(args.max_load, args.max_wait)
    started = time.monotonic()
    messages = synthetic_messages(args.messages, args.size)
    avg = sum(len(m) for m in messages) / len(messages)
    cases: list[tuple[str, int, str, int]] = [("1 connection", 1, "threads", args.messages)]
    for k in ks:
        cases.append((f"{k} conns, {k} threads", k, "threads", args.messages))
        cases.append((f"{k} conns, {k} processes", k, "processes", args.messages))
    if args.per_message:
        cases.append(("new conn per message", 1, "per-message", args.per_message))

    rows = [["case", "connections", "messages", "msg/s (median)", "min-max msg/s", "MB/s",
             "ms/msg/conn", "sink CPU"]]  # fmt: skip
    with Sink() as sink:
        # Warm up both sides (imports, the sink's event loop) outside the measurement.
        ceiling(sink, messages[:200], 1, "threads", args.timeout)
        for label, k, mode, n in cases:
            runs: list[CeilingResult] = []
            for _ in range(args.repeat):
                runs.append(ceiling(sink, messages[:n], k, mode, args.timeout))
            rates = [r.per_second for r in runs]
            mid = sorted(runs, key=lambda r: r.per_second)[len(runs) // 2]
            log(f"{label}: " + ", ".join(f"{r:,.0f}" for r in rates) + " msg/s")
            rows.append([
                label, str(k), f"{mid.messages:,}", f"{statistics.median(rates):,.0f}",
                f"{min(rates):,.0f}-{max(rates):,.0f}",
                f"{mid.bytes / mid.seconds / 1e6:.1f}" if mid.seconds else "n/a",
                f"{1000 * k / mid.per_second:.2f}" if mid.per_second else "n/a",
                f"{100 * mid.sink_cpu / mid.seconds:.0f}%" if mid.seconds else "n/a",
            ])  # fmt: skip

    print(f"SMTP ceiling: raw smtplib -> aiosmtpd sink (own process), 127.0.0.1; {machine()}")
    print(f"messages: {avg:,.0f} bytes on average (text + HTML), pre-rendered; {load} at start")
    print()
    print(table(rows, right=(1, 2, 3, 4, 5, 6, 7)))
    print()
    print(
        "msg/s: first MAIL to last 250 over all connections; ms/msg/conn: the time one "
        "connection spends per message;\nsink CPU: the aiosmtpd process's CPU time over the "
        f"case (100% = one core, its limit). {args.repeat} runs per case; "
        f"took {time.monotonic() - started:.0f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
