"""Tests that run while no other test runs (the `timing` marker), under pytest-xdist.

A `timing` test measures wall-clock time: medians of signup answers, a page's answer against a
relay's reply, the spacing of rate-limit slots. Tests of other xdist workers loading the same
two cores would move what it measures, so it waits until they are done and none starts until
it is over.

The lock is a readers-writer lock over flock(2) between the workers of one run, with a
turnstile so that a waiting writer is not starved: every test passes the turnstile and then
holds the room shared; a `timing` test keeps the turnstile (no new test starts anywhere) and
waits for the room to empty (the tests already running end). Consecutive `timing` tests of one
worker keep the room between them.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


class Room:
    """This worker's side of the lock; the files live in a folder shared by the run's workers."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._turnstile: IO[str] = open(folder / "turnstile", "a")  # held for the session
        self._room: IO[str] = open(folder / "room", "a")
        self.alone = False
        self.inside = False

    def enter(self, *, alone: bool) -> None:
        """Block until this worker may start a test (alone: with no other test running)."""
        if alone and self.alone:
            return  # the previous test was a timing test too: still alone
        self.leave()
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        if alone:
            fcntl.flock(self._room, fcntl.LOCK_EX)
            self.alone = True
        else:
            fcntl.flock(self._room, fcntl.LOCK_SH)
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
            self.inside = True

    def leave(self) -> None:
        """Let others in again."""
        if self.alone or self.inside:
            fcntl.flock(self._room, fcntl.LOCK_UN)
        if self.alone:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        self.alone = self.inside = False

    def close(self) -> None:
        self.leave()
        self._turnstile.close()
        self._room.close()
