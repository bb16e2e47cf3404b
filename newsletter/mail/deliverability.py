"""Whether an address's domain can receive mail at all: MX records, or else A/AAAA (RFC 5321's
implicit MX). Used at signup when CHECK_DELIVERABILITY is on.

The answer is a judgement on the domain, never on the person: a lookup that times out or fails
on the way counts as deliverable, so a slow or broken resolver never turns a good address away.
Answers are kept in an in-process cache for a while, so a burst of signups from one domain costs
one lookup.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import dns.exception
import dns.resolver

# One lookup (MX, then A, then AAAA) may take this long in all; past it, the address is accepted.
LOOKUP_TIMEOUT_SECONDS = 2.0
# How long an answer is kept. A domain that gains its MX records is let in after this at most.
CACHE_SECONDS = 600.0
CACHE_SIZE = 10_000
UNDELIVERABLE = "The domain of this address does not receive mail. Check it for a typo."


class DeliverabilityCheck:
    """Looks domains up through `resolver` (default: the system's) and caches the answers."""

    def __init__(
        self,
        resolver: dns.resolver.Resolver | None = None,
        *,
        timeout: float = LOOKUP_TIMEOUT_SECONDS,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver or dns.resolver.Resolver()
        self.resolver.lifetime = timeout
        self.resolver.timeout = timeout
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def receives_mail(self, domain: str) -> bool:
        """True unless DNS says the domain has no MX, A or AAAA record (or does not exist)."""
        domain = domain.lower().rstrip(".")
        now = self._clock()
        with self._lock:
            kept = self._cache.get(domain)
        if kept is not None and kept[0] > now:
            return kept[1]
        answer = self._look_up(domain)
        with self._lock:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()  # crude, but bounded; a full cache is a flood anyway
            self._cache[domain] = (now + self._cache_seconds, answer)
        return answer

    def _look_up(self, domain: str) -> bool:
        deadline = self._clock() + float(self.resolver.lifetime)
        for kind in ("MX", "A", "AAAA"):
            left = deadline - self._clock()
            if left <= 0:
                return True  # out of time: accept
            try:
                answer = self.resolver.resolve(domain, kind, lifetime=left, search=False)
            except dns.resolver.NXDOMAIN:
                return False  # the domain does not exist: no record of any kind
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.DNSException:
                # A timeout, a failing server or a broken answer says nothing about the domain.
                return True
            if kind == "MX":
                # A "null MX" (RFC 7505: one record, exchange ".") says the domain takes no mail.
                return any(str(record.exchange) != "." for record in answer)
            return True
        return False
