"""The servers and processes a fault case owns, and the ways it breaks them.

A private redis-server (`tests.helpers.redis_server.PrivateRedis`) and the product's embedded
broker seen from outside (`EmbeddedBroker`) can be killed, flushed, stopped and started
again; `Fleet` starts the case's worker processes and kills them with SIGKILL;
`terminate_backends` cuts every PostgreSQL connection to the case's database.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis

from newsletter import embedded
from tests.helpers.workers import WorkerProcess

# -- brokers the test owns ---------------------------------------------------------------------


def _running(pid: int) -> bool:
    """Whether `pid` is alive. A daemonized server's zombie counts as gone: nothing may reap it
    (PID 1 of a container often does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


class EmbeddedBroker:
    """The product's embedded redis-server (unix socket in INSTANCE_DIR), seen from outside."""

    def __init__(self, instance_dir: Path) -> None:
        self.instance_dir = instance_dir.resolve()

    def client(self) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(embedded.socket_path(self.instance_dir)), socket_timeout=3
        )

    def pid(self) -> int | None:
        try:
            return int((self.instance_dir / "redis.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def flushall(self) -> None:
        self.client().flushall()

    def kill(self) -> None:
        """kill -9 the server through its pid file, and wait until it is gone."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)

    def start(self) -> None:
        embedded.ensure_running(self.instance_dir)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it lingers.

        Not `embedded.stop`: its SHUTDOWN through redis-py takes ~4-6 s (the client retries
        the command after the server closed the connection, with backoff).
        """
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)
        self.kill()


# -- workers -------------------------------------------------------------------------------


class Fleet:
    """Worker processes of one test; every one is stopped by `stop_all` (fixture teardown)."""

    def __init__(
        self,
        tmp_path: Path,
        start: Callable[..., WorkerProcess],
        stop: Callable[..., None],
    ) -> None:
        self.tmp_path = tmp_path
        self._start = start
        self._stop = stop
        self.workers: list[WorkerProcess] = []

    def start(self, env: dict[str, str], concurrency: int = 2) -> WorkerProcess:
        name = f"w{len(self.workers) + 1}"
        worker = self._start(env, self.tmp_path, concurrency=concurrency, name=name)
        self.workers.append(worker)
        return worker

    def kill9(self, worker: WorkerProcess) -> None:
        """SIGKILL the worker's whole process group (main process, pool children, beat)."""
        try:
            os.killpg(worker.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for worker in self.workers:
            self._stop(worker)

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.log()[-4000:]}" for w in self.workers)


# -- PostgreSQL ----------------------------------------------------------------------------


def terminate_backends(admin_url: str, database: str) -> int:
    """pg_terminate_backend every connection to `database` (but the admin's own)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)
