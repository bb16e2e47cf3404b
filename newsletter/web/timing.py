"""Answers whose timing says nothing: padded to a fixed floor."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def answer_floor(
    seconds: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Let the block end no sooner than `seconds` after it began, on every path out of it."""
    start = clock()
    try:
        yield
    finally:
        left = start + seconds - clock()
        if left > 0:
            sleep(left)
