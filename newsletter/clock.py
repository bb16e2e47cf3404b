"""The one clock every service reads, so tests and demos can move time explicitly.

Within one process a test sets `clock.offset`. Across processes (a test driving real workers)
CLOCK_OFFSET_FILE names a file holding an offset in seconds that every process adds.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path


class Clock:
    """UTC wall clock with an adjustable offset."""

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self._file: Path | None = None
        self._file_stamp: int | None = None
        self._file_offset = timedelta(0)

    def use_offset_file(self, path: Path | None) -> None:
        """Also add the offset (seconds) written in `path`, re-read whenever the file changes."""
        self._file = path
        self._file_stamp = None
        self._file_offset = timedelta(0)

    def _shared_offset(self) -> timedelta:
        if self._file is None:
            return timedelta(0)
        try:
            stamp = os.stat(self._file).st_mtime_ns
        except FileNotFoundError:
            return timedelta(0)
        if stamp != self._file_stamp:
            text = self._file.read_text().strip()
            self._file_offset = timedelta(seconds=float(text or 0))
            self._file_stamp = stamp
        return self._file_offset

    def now(self) -> datetime:
        """The current time, timezone-aware in UTC."""
        return datetime.now(UTC) + self.offset + self._shared_offset()


clock = Clock()


def now() -> datetime:
    """Shorthand for `clock.now()`."""
    return clock.now()
