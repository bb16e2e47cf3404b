"""Processes seen from /proc: RSS, PSS and CPU time, descendants, SMTP sockets, group kill.

    ProcSampler     peak RSS (and PSS) and CPU time of a process tree, every 0.2 s
    children_of()   every live descendant of a process
    smtp_peers()    how many TCP connections a process holds to a port
    kill_group()    SIGTERM a session leader, wait, then SIGKILL its whole group

Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def children_of(root: int) -> list[int]:
    """Every live descendant of `root` (scanning /proc for parent ids)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        kids = [c for c, p in parents.items() if p == pid]
        found.extend(kids)
        frontier.extend(kids)
    return sorted(found)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def pss_kb(pid: int) -> int | None:
    """Proportional set size: shared pages divided among the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def smtp_peers(pid: int, port: int) -> int:
    """How many TCP connections process `pid` holds to 127.0.0.1:`port` (its SMTP sockets)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[2].split(":")[1], 16) == port and cols[9] in inodes:
                count += 1
    return count


@dataclass
class ProcStats:
    pid: int
    first_rss_kb: int = 0
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    cpu_start: float | None = None
    cpu_last: float = 0.0
    label: str = ""


@dataclass
class ProcSampler:
    """Samples VmRSS (peak) and CPU time of a process and its descendants every `interval` s."""

    root: int
    interval: float = 0.2
    extra: dict[int, str] = field(default_factory=dict)  # other pids to follow, with labels
    stats: dict[int, ProcStats] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        pids = [self.root, *children_of(self.root), *self.extra]
        for pid in pids:
            rss = rss_kb(pid)
            cpu = cpu_seconds(pid)
            if rss is None or cpu is None:
                continue
            st = self.stats.setdefault(pid, ProcStats(pid, label=self.extra.get(pid, "")))
            st.first_rss_kb = st.first_rss_kb or rss
            st.peak_rss_kb = max(st.peak_rss_kb, rss)
            st.peak_pss_kb = max(st.peak_pss_kb, pss_kb(pid) or 0)
            if st.cpu_start is None:
                st.cpu_start = cpu
            st.cpu_last = cpu

    def mark_cpu_start(self) -> None:
        """Count CPU from now on (e.g. from the first message, leaving start-up out)."""
        for st in self.stats.values():
            st.cpu_start = st.cpu_last

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()

    def start(self) -> ProcSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def kill_group(proc: subprocess.Popen[bytes], term_wait: float = 15.0) -> None:
    """SIGTERM a process that leads its own session, wait, then SIGKILL the whole group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(term_wait)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
