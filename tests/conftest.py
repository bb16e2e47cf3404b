"""Shared fixtures: real databases, a real SMTP server, real Celery workers.

SQLite runs always. PostgreSQL and Redis run when reachable (TEST_PG_URL, TEST_REDIS_URL;
defaults are the local servers); under CI=true a missing server is an error, not a skip.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiosmtpd.controller import Controller
from flask import Flask

from newsletter import create_app, embedded
from newsletter.config import load_settings
from newsletter.db import db
from newsletter.migrate import upgrade

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(what: str, why: object) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required in CI but unavailable: {why}")
    pytest.skip(f"{what} unavailable: {why}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- SMTP ------------------------------------------------------------------------------------


@dataclass
class SinkHandler:
    """aiosmtpd handler that keeps every message and can refuse chosen recipients."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # each message exactly as received
    refuse: dict[str, str] = field(default_factory=dict)  # address -> SMTP reply
    rcpt_reply: str | None = None  # reply to every RCPT instead of 250
    mail_reply: str | None = None  # reply to MAIL FROM instead of 250, e.g. "550 5.7.1 no"
    data_reply: str | None = None  # reply to DATA instead of 250, e.g. "451 try later"
    cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.lower() in self.refuse:
            return self.refuse[address.lower()]
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        msg = BytesParser(policy=policy.default).parsebytes(envelope.original_content)
        with self.cond:
            self.messages.append(msg)  # type: ignore[arg-type]
            self.raw.append(bytes(envelope.original_content))
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.cond.notify_all()
        return "250 Message accepted"


@dataclass
class SmtpSink:
    """A real SMTP server on 127.0.0.1 that tests read mail back from."""

    host: str
    port: int
    handler: SinkHandler

    @property
    def messages(self) -> list[EmailMessage]:
        with self.handler.cond:
            return list(self.handler.messages)

    def to(self, address: str) -> list[EmailMessage]:
        """Messages addressed to `address`, in arrival order."""
        return [m for m in self.messages if address in str(m["To"])]

    def wait_for(
        self, predicate: Callable[[list[EmailMessage]], bool], timeout: float = 60.0
    ) -> list[EmailMessage]:
        """Block until `predicate(messages)` holds; fail the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.handler.cond:
            while not predicate(list(self.handler.messages)):
                left = deadline - time.monotonic()
                if left <= 0:
                    have = [str(m["Subject"]) for m in self.handler.messages]
                    pytest.fail(
                        f"mail did not arrive in {timeout}s; have {len(have)}, last: {have[-5:]}"
                    )
                self.handler.cond.wait(min(left, 0.5))
            return list(self.handler.messages)


@contextmanager
def running_sink() -> Iterator[SmtpSink]:
    """An aiosmtpd server on a free port of 127.0.0.1, stopped on exit."""
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpSink("127.0.0.1", port, handler)
    finally:
        controller.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A fresh aiosmtpd server per test."""
    with running_sink() as sink:
        yield sink


# -- databases and brokers ---------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'newsletter.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        _unavailable("PostgreSQL", exc)
    name = f"nl_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        db.dispose()
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own, flushed before and after the test."""
    import redis

    url = f"{REDIS_URL.rstrip('/')}/{7 + os.getpid() % 8}"
    try:
        client = redis.Redis.from_url(url, socket_timeout=3)
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", exc)
    try:
        yield url
    finally:
        client.flushdb()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


# -- the app -------------------------------------------------------------------------------------


def base_env(
    tmp_path: Path, database_url: str, smtp: SmtpSink | None, **extra: str
) -> dict[str, str]:
    """Settings for one test: its own instance folder, database, SMTP server and clock speed."""
    env = {
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "DATABASE_URL": database_url,
        "BROKER_URL": "embedded",
        "REDIS_URL": "memory://",
        "SECRET_KEY": "test-secret-key-0123456789",
        "SITE_URL": "https://news.example.test",
        "MAIL_FROM": "Course <course@example.test>",
        "POSTAL_ADDRESS": "1 Test Street, Testville",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port if smtp else free_port()),
        "SMTP_TIMEOUT_SECONDS": "10",
        "SIGNUP_RATE_LIMIT": "1000 per minute",
        # The padding of signup answers is measured in test_signup_timing; elsewhere it would
        # only add a quarter second to every signup of the suite.
        "SIGNUP_ANSWER_SECONDS": "0",
    }
    env.update(extra)
    return env


def make_app(env: dict[str, str]) -> Flask:
    """An app built from `env` alone (not the process environment), with its schema in place."""
    settings = load_settings(env)
    app = create_app(settings)
    app.config["TESTING"] = True
    upgrade(settings.database_url)
    return app


@pytest.fixture
def app(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> Iterator[Flask]:
    """An app on a fresh database (SQLite and PostgreSQL), with the seed sequence imported."""
    from newsletter.content.sequences import ensure_seed

    application = make_app(base_env(tmp_path, database_url, smtp_sink))
    with db.transaction() as session:
        ensure_seed(session)
    yield application
    db.dispose()


@pytest.fixture
def at_time() -> Iterator[Callable[[datetime], None]]:
    """Move the shared clock of this process to a chosen instant for the test's duration."""
    from newsletter import clock

    def _at(when: datetime) -> None:
        clock.clock.offset = when - datetime.now(UTC)

    yield _at
    clock.clock.offset = timedelta(0)


# -- real worker processes ---------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A `celery -A worker worker -B` child process and its log."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    env: dict[str, str],
    tmp_path: Path,
    *,
    beat: bool = True,
    concurrency: int = 2,
    name: str = "w1",
) -> WorkerProcess:
    """Start a Celery worker (and beat) as a separate process and wait until it is ready."""
    log_path = tmp_path / f"worker-{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        cmd += ["-B", "-s", str(tmp_path / f"beat-{name}")]
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(proc, log_path)
    deadline = time.monotonic() + 60
    while " ready." not in worker.log():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(worker)
            pytest.fail(f"worker did not start:\n{worker.log()[-3000:]}")
        time.sleep(0.2)
    return worker


def stop_worker(worker: WorkerProcess, sig: int = signal.SIGTERM) -> None:
    """Stop a worker and its pool children."""
    if worker.proc.poll() is None:
        try:
            os.killpg(worker.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            worker.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(timeout=10)


@pytest.fixture
def run_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers for a test; all of them (and an embedded broker) stop at its end."""
    started: list[WorkerProcess] = []
    # Remembered before the start: a worker that fails to start may still have started the
    # embedded broker, which must not outlive the test.
    envs: list[dict[str, str]] = []

    def _start(env: dict[str, str], **kwargs: Any) -> WorkerProcess:
        envs.append(env)
        worker = start_worker(env, tmp_path, **kwargs)
        started.append(worker)
        return worker

    yield _start
    for worker in started:
        stop_worker(worker)
    for env in envs:
        if env.get("BROKER_URL") == "embedded":
            embedded.stop(Path(env["INSTANCE_DIR"]).resolve())


# -- headless Chromium ---------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium (Debian's) for the module; each test opens its own context."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        _unavailable("Chromium", f"{CHROMIUM} does not exist (install Debian's chromium)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open a page in a fresh context (cookies, zone, viewport of its own); closed at the end."""
    contexts: list[BrowserContext] = []

    def _open(**options: Any) -> Page:
        context = browser.new_context(**options)
        contexts.append(context)
        return context.new_page()

    yield _open
    for context in contexts:
        context.close()
