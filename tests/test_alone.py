"""The lock that lets a `timing` test run alone under pytest-xdist (tests/helpers/alone.py).

Each side runs in a thread with its own Room: flock(2) locks belong to open files, so three
Rooms in one process contend exactly as three xdist workers do.
"""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

from tests.helpers.alone import Room


def test_a_timing_test_waits_for_running_tests_and_holds_new_ones_off(tmp_path: Path) -> None:
    log: list[str] = []
    guard = threading.Lock()

    def note(event: str) -> None:
        with guard:
            log.append(event)

    a_inside, a_may_leave = threading.Event(), threading.Event()

    def running_test() -> None:  # A: a test already running on another worker
        room = Room(tmp_path)
        room.enter(alone=False)
        note("A in")
        a_inside.set()
        a_may_leave.wait()
        note("A out")
        room.close()

    def timing_test() -> None:  # B: a timing test
        room = Room(tmp_path)
        room.enter(alone=True)
        note("B in")
        note("B out")
        room.close()

    def next_test() -> None:  # C: a test that starts while B waits
        room = Room(tmp_path)
        room.enter(alone=False)
        note("C in")
        room.close()

    a = threading.Thread(target=running_test)
    a.start()
    a_inside.wait()
    b = threading.Thread(target=timing_test)
    b.start()
    # B holds the turnstile once it waits for the room: then a non-blocking try fails.
    with open(tmp_path / "turnstile", "a") as turnstile:
        deadline = time.monotonic() + 10
        while True:
            try:
                fcntl.flock(turnstile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                break
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            assert time.monotonic() < deadline, "the timing test never queued"
            time.sleep(0.01)
    c = threading.Thread(target=next_test)
    c.start()
    a_may_leave.set()
    for thread in (a, b, c):
        thread.join(timeout=10)
    assert log == ["A in", "A out", "B in", "B out", "C in"]


def test_consecutive_timing_tests_keep_the_room(tmp_path: Path) -> None:
    room, other = Room(tmp_path), Room(tmp_path)
    room.enter(alone=True)
    room.enter(alone=True)  # the next timing test of the same worker: no wait, still alone
    with open(tmp_path / "room", "a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            shared = True
        except BlockingIOError:
            shared = False
    assert not shared, "another worker could start a test while a timing test runs"
    room.leave()
    other.enter(alone=False)  # free again
    other.close()
    room.close()
