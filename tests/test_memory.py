"""The worker's memory budget: an allocation past it fails where it was made, the process lives."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.apps import base_env, make_app
from tests.helpers.workers import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
from newsletter.memory import cap_memory
cap_memory(256)
try:
    hog = bytearray(600 * 1024 * 1024)
except MemoryError:
    print("refused")
else:
    print("allocated", len(hog))
small = bytearray(8 * 1024 * 1024)
print("alive", len(small))
"""


def test_an_allocation_past_the_budget_raises_and_the_process_goes_on() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["refused", f"alive {8 * 1024 * 1024}"]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


@pytest.mark.slow
def test_worker_pool_processes_run_under_the_budget(
    tmp_path: Path, sqlite_url: str, run_worker: Callable[..., WorkerProcess]
) -> None:
    env = base_env(tmp_path, sqlite_url, None, WORKER_MEMORY_LIMIT_MB="512")
    make_app(env)  # the schema, so the worker starts on a real database
    worker = run_worker(env, beat=False, concurrency=2)
    deadline = time.monotonic() + 20
    children: list[int] = []
    while len(children) < 2 and time.monotonic() < deadline:
        children = _children(worker.proc.pid)
        time.sleep(0.2)
    assert len(children) >= 2, worker.log()[-2000:]
    for child in children:
        limits = Path(f"/proc/{child}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max data size"))
        assert line.split()[3] == str(512 * 1024 * 1024), line
