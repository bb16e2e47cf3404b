"""Flow control shared by every worker: a global send rate, and pauses with their reasons.

Sending pauses for one of three reasons: the error brake (too many transient failures in a
row), a relay pause (the relay refused us at connect, EHLO, STARTTLS, AUTH or MAIL FROM, or
with a 5.7.x about relaying or authentication), and a breaker hold (too many refusals among
the last sends; see `breaker`). The first two resume by themselves after a pause that
doubles on each trip up to a bound; a hold lasts until an operator resumes sending.

The state lives in Redis (REDIS_URL) so that any number of worker processes on any number
of machines obey one limit and one pause. With REDIS_URL=memory:// (tests without Redis)
the state is per process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import redis

from newsletter.delivery.policy import Outcome

log = logging.getLogger(__name__)

PREFIX = "newsletter:flow:"
BRAKE_FIRST_PAUSE_SECONDS = 30.0
PAUSE_CHECK_SECONDS = 0.5
# A hold has no end time; this stands for "until an operator resumes".
HOLD_UNTIL = 1e15

# Reserve the next send slot: slots are `interval` microseconds apart on the server's clock,
# so all workers together send at most one message per interval, without bursts. Returns the
# microseconds the caller must wait for its slot.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
redis.call('SET', KEYS[1], string.format('%d', slot + tonumber(ARGV[1])), 'PX', 60000)
return slot - now
"""


@dataclass(frozen=True)
class Pause:
    """Sending is paused until `until` (epoch seconds; HOLD_UNTIL for a hold) because `reason`."""

    until: float
    reason: str

    @property
    def held(self) -> bool:
        """A breaker hold: only an operator ends it."""
        return self.until >= HOLD_UNTIL


class Store(Protocol):
    """The few operations flow control needs from its shared store."""

    def reserve(self, interval_us: int) -> int: ...
    def incr_failures(self) -> int: ...
    def reset_failures(self) -> None: ...
    def trip(self, now: float, max_pause: float, reason: str) -> float: ...
    def hold(self, reason: str) -> None: ...
    def paused_until(self) -> float: ...
    def pause(self) -> Pause | None: ...
    def clear_trips(self) -> bool: ...


class RedisStore:
    """Flow-control state in Redis, shared by every process."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._reserve = client.register_script(_RESERVE)

    def reserve(self, interval_us: int) -> int:
        return int(self._reserve(keys=[PREFIX + "slot"], args=[interval_us]))

    def incr_failures(self) -> int:
        return int(cast(int, self.client.incr(PREFIX + "failures")))

    def reset_failures(self) -> None:
        self.client.delete(PREFIX + "failures")

    def trip(self, now: float, max_pause: float, reason: str) -> float:
        if self.paused_until() >= HOLD_UNTIL:
            return 0.0  # a hold outranks a timed pause
        trips = int(cast(int, self.client.incr(PREFIX + "trips")))
        pause = float(min(max_pause, BRAKE_FIRST_PAUSE_SECONDS * 2 ** (trips - 1)))
        self.client.mset(
            {PREFIX + "paused_until": f"{now + pause:.3f}", PREFIX + "pause_reason": reason}
        )
        self.client.delete(PREFIX + "failures")
        return pause

    def hold(self, reason: str) -> None:
        self.client.mset(
            {PREFIX + "paused_until": f"{HOLD_UNTIL:.3f}", PREFIX + "pause_reason": reason}
        )

    def paused_until(self) -> float:
        value = cast(bytes | None, self.client.get(PREFIX + "paused_until"))
        return float(value) if value else 0.0

    def pause(self) -> Pause | None:
        until, reason = cast(
            list[bytes | None], self.client.mget(PREFIX + "paused_until", PREFIX + "pause_reason")
        )
        if not until:
            return None
        return Pause(float(until), (reason or b"").decode("utf-8", "replace"))

    def clear_trips(self) -> bool:
        keys = (PREFIX + "trips", PREFIX + "paused_until", PREFIX + "pause_reason")
        return bool(self.client.delete(*keys))


class MemoryStore:
    """The same state within one process (no Redis configured)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slot = 0.0
        self.failures = 0
        self.trips = 0
        self.until = 0.0
        self.reason = ""

    def reserve(self, interval_us: int) -> int:
        with self.lock:
            now = time.monotonic() * 1e6
            slot = max(self.slot, now)
            self.slot = slot + interval_us
            return int(slot - now)

    def incr_failures(self) -> int:
        with self.lock:
            self.failures += 1
            return self.failures

    def reset_failures(self) -> None:
        self.failures = 0

    def trip(self, now: float, max_pause: float, reason: str) -> float:
        with self.lock:
            if self.until >= HOLD_UNTIL:
                return 0.0  # a hold outranks a timed pause
            self.trips += 1
            pause = float(min(max_pause, BRAKE_FIRST_PAUSE_SECONDS * 2 ** (self.trips - 1)))
            self.until, self.reason = now + pause, reason
            self.failures = 0
            return pause

    def hold(self, reason: str) -> None:
        with self.lock:
            self.until, self.reason = HOLD_UNTIL, reason

    def paused_until(self) -> float:
        return self.until

    def pause(self) -> Pause | None:
        return Pause(self.until, self.reason) if self.until else None

    def clear_trips(self) -> bool:
        had = self.trips > 0 or self.until > 0
        self.trips, self.until, self.reason = 0, 0.0, ""
        return had


class FlowControl:
    """The global rate limit and the error brake, over a shared Store."""

    def __init__(
        self,
        store: Store,
        *,
        rate_per_second: float,
        brake_after: int,
        max_pause: float,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.interval_us = int(1e6 / rate_per_second) if rate_per_second > 0 else 0
        self.brake_after = brake_after
        self.max_pause = max_pause
        self.wall = wall
        self.sleep = sleep
        # Local knowledge that spares a Redis round trip per message in the common case: the
        # last transient-failure streak this process saw, and a short-lived pause answer.
        self._failing = False
        self._pause_checked_at = float("-inf")
        self._pause_answer = False
        self._reset_at = float("-inf")

    def wait_for_slot(self) -> None:
        """Block until this process may send one message under the global rate."""
        if not self.interval_us:
            return
        try:
            wait_us = self.store.reserve(self.interval_us)
        except redis.RedisError as exc:
            # Without its store the limiter cannot coordinate; sending goes on unthrottled
            # rather than stopping, and says so.
            log.warning("rate limiter store unavailable (%s); sending unthrottled", exc)
            return
        if wait_us > 0:
            self.sleep(wait_us / 1e6)

    def record(self, outcome: Outcome, detail: str = "") -> None:
        """Count consecutive transport failures (the brake); pause at once on a relay refusal.

        `detail` is the failure's description, kept as the pause's reason.
        """
        try:
            if outcome is Outcome.PAUSED:
                reason = f"the relay refused us: {detail}"
                pause = self.store.trip(self.wall(), self.max_pause, reason)
                self._paused_now()
                log.error(
                    "SENDING PAUSED for %.0f s: %s. Nobody is suppressed; mail waits in the "
                    "queue and sending resumes by itself when the relay accepts again. Check "
                    "SMTP_HOST, SMTP_USERNAME, SMTP_PASSWORD, SMTP_SECURITY and MAIL_FROM.",
                    pause,
                    reason,
                )
            elif outcome is Outcome.RETRY:
                self._failing = True
                if self.store.incr_failures() >= self.brake_after:
                    reason = f"{self.brake_after} consecutive transport failures"
                    pause = self.store.trip(self.wall(), self.max_pause, f"{reason}: {detail}")
                    log.error("error brake: %s; pausing for %.0f s (%s)", reason, pause, detail)
            elif outcome is Outcome.SENT and (
                self._failing or self.wall() - self._reset_at >= PAUSE_CHECK_SECONDS
            ):
                # A success ends the streak for every worker; other processes' streaks are
                # reset at most every PAUSE_CHECK_SECONDS to spare a round trip per message.
                self._failing = False
                self._reset_at = self.wall()
                self.store.reset_failures()
                until = self.store.paused_until()
                if until and until <= self.wall() and self.store.clear_trips():
                    log.warning("error brake released: mail is going out again")
        except redis.RedisError as exc:
            log.warning("error brake store unavailable: %s", exc)

    def hold(self, reason: str) -> None:
        """Hold sending everywhere until an operator resumes it (the bounce breaker)."""
        self._paused_now()
        try:
            self.store.hold(reason)
        except redis.RedisError as exc:
            # The database keeps the trip too: the dispatcher and every batch still see it.
            log.warning("flow store unavailable, the hold is kept in the database only: %s", exc)

    def resume(self) -> bool:
        """Lift any pause or hold now (an operator's decision); whether there was one."""
        self._pause_answer = False
        self._pause_checked_at = float("-inf")
        return self.store.clear_trips()

    def pause(self) -> Pause | None:
        """The current pause and its reason, if sending is paused right now."""
        current = self.store.pause()
        return current if current is not None and current.until > self.wall() else None

    def _paused_now(self) -> None:
        # This process knows at once; the others see the store within PAUSE_CHECK_SECONDS.
        self._pause_answer = True
        self._pause_checked_at = self.wall()

    def paused(self) -> bool:
        """Whether dispatch and sending are paused by the brake right now.

        Asked before every message, so the answer is kept for PAUSE_CHECK_SECONDS: a trip is
        seen by every worker within that time.
        """
        now = self.wall()
        if now - self._pause_checked_at < PAUSE_CHECK_SECONDS and not self._failing:
            return self._pause_answer
        try:
            until = self.store.paused_until()
        except redis.RedisError:
            return False
        self._pause_checked_at = now
        self._pause_answer = until > now
        return self._pause_answer


def store_for(redis_url: str) -> Store:
    """A Redis store for a redis:// or redis+unix:// URL, a process-local one for memory://."""
    if redis_url.startswith("memory"):
        return MemoryStore()
    if redis_url.startswith("redis+unix://"):
        client = redis.Redis(unix_socket_path=redis_url[len("redis+unix://") :], socket_timeout=5)
    else:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
    return RedisStore(client)
