"""Real `celery -A worker worker -B` processes, started for a test and stopped after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.env import ROOT


@dataclass
class WorkerProcess:
    """A `celery -A worker worker -B` child process and its log."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    env: dict[str, str],
    tmp_path: Path,
    *,
    beat: bool = True,
    concurrency: int = 2,
    name: str = "w1",
) -> WorkerProcess:
    """Start a Celery worker (and beat) as a separate process and wait until it is ready."""
    log_path = tmp_path / f"worker-{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        cmd += ["-B", "-s", str(tmp_path / f"beat-{name}")]
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(proc, log_path)
    deadline = time.monotonic() + 60
    while " ready." not in worker.log():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(worker)
            pytest.fail(f"worker did not start:\n{worker.log()[-3000:]}")
        time.sleep(0.2)
    return worker


def stop_worker(worker: WorkerProcess, sig: int = signal.SIGTERM) -> None:
    """Stop a worker and its pool children."""
    if worker.proc.poll() is None:
        try:
            os.killpg(worker.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            worker.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(timeout=10)
