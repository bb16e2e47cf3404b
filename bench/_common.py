"""Small helpers every delivery benchmark uses (`smtp_ceiling.py`, `pipeline.py`, ...).

    log(), table()      progress to stderr; plain-text result tables
    median_p95()        median and 95th percentile of repeated measurements
    wait_for_quiet()    wait for a low load average, and describe the load a run starts under
    machine(), source_revision()
                        what was measured on: CPUs and Python, and the product's commit
    free_port(), timed()

The pieces with a job of their own are beside this file: `_sink.py` (the SMTP sink and the
raw smtplib ceiling), `_procs.py` (RSS, PSS and CPU of processes from /proc) and
`_services.py` (a private Redis, a fresh PostgreSQL database, the product's settings, data
and messages). Nothing here asserts a duration.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def log(message: str) -> None:
    """Progress goes to stderr; results to stdout."""
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def table(rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A plain-text table; the first row is the header, columns in `right` are right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def cell(i: int, value: str) -> str:
        return value.rjust(widths[i]) if i in right else value.ljust(widths[i])

    lines = [" | ".join(cell(i, v) for i, v in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def median_p95(values: Sequence[float]) -> tuple[float, float]:
    """Median and 95th percentile (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(0.95 * len(ordered) + 0.5)) - 1))
    return statistics.median(ordered), ordered[rank]


# --- machine load -----------------------------------------------------------------------------


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def wait_for_quiet(threshold: float, max_wait: float) -> str:
    """Wait (up to `max_wait` s) until the 1-minute load average is at most `threshold`.

    Returns a description of the load the run starts under, for the report.
    """
    deadline = time.monotonic() + max_wait
    while True:
        load = loadavg()
        if load[0] <= threshold:
            break
        if time.monotonic() >= deadline:
            log(f"load {load[0]:.2f} still above {threshold}; running anyway")
            break
        log(f"load average {load[0]:.2f} > {threshold}: waiting for a quieter machine ...")
        time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))
    return f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)"


def machine() -> str:
    cpus = os.cpu_count() or 0
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cpus} CPUs{f' ({model})' if model else ''}, Python {sys.version.split()[0]}"


# --- timing and provenance ---------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def source_revision() -> str:
    """The commit the product code was measured at (read-only git), and whether it was edited."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "newsletter", "worker.py"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"commit {head}{' + uncommitted changes in newsletter/' if dirty else ''}"
