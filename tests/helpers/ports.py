"""Free TCP ports on 127.0.0.1 for the servers a test starts (SMTP, Redis, HTTP).

A port from bind(0) comes from the kernel's ephemeral range, where every outgoing connection
on the machine also takes its local port, and a port found free and then closed may be handed
to another process before the test's server binds it. With tests in parallel (pytest-xdist)
that turns into a server that cannot start. So each test process takes its ports from a block
of its own below the ephemeral range, one after another, each checked free before it is given.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

from tests.helpers.env import worker_number

FIRST_PORT = 20000
BLOCK_SIZE = 500

_lock = threading.Lock()
_next: int | None = None


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, and that no other test process of
    this run will be given."""
    global _next
    low = FIRST_PORT + worker_number() * BLOCK_SIZE
    high = low + BLOCK_SIZE
    if high > _ephemeral_start():
        return _kernel_port()  # more workers than blocks fit below the ephemeral range
    with _lock:
        if _next is None:
            # A random start, so that two suites run side by side (two work trees) are unlikely
            # to walk the same block in step.
            _next = random.randrange(BLOCK_SIZE)
        for _ in range(BLOCK_SIZE):
            port = low + _next % BLOCK_SIZE
            _next += 1
            if _is_free(port):
                return port
    return _kernel_port()
