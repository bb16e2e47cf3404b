"""Shared fixtures: real databases, a real SMTP server, real Celery workers.

SQLite runs always. PostgreSQL runs when reachable (TEST_PG_URL, default the local server).
Redis is the server TEST_REDIS_URL names, or else a private redis-server started for the
session (see `tests/helpers/redis_server.py`). Under CI=true a missing server is an error,
not a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask

from newsletter import embedded
from newsletter.db import db
from tests.helpers.alone import Room
from tests.helpers.apps import base_env, make_app
from tests.helpers.env import PG_ADMIN_URL, ROOT, unavailable, worker_number
from tests.helpers.postgres import Databases
from tests.helpers.redis_server import PrivateRedis, redis_executable, worker_database
from tests.helpers.smtp import SmtpSink, running_sink
from tests.helpers.workers import WorkerProcess, start_worker, stop_worker

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

# -- markers ---------------------------------------------------------------------------------


def require_marker(request: pytest.FixtureRequest, name: str, what: str) -> None:
    """Fail a test that uses `what` without carrying the marker `name`.

    Runs are chosen by markers (`-m "not slow"`, `-m "not postgres"`), so a test missing its
    marker would be let into a run it does not belong in.
    """
    if request.node.get_closest_marker(name) is None:
        pytest.fail(f"{request.node.nodeid} uses {what} but is not marked @pytest.mark.{name}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check the markers fixtures imply; put the `timing` tests last.

    Under xdist a `timing` test waits for every running test to end and holds off new ones
    (tests/helpers/alone.py), so it costs least once the rest of the run is done.
    """
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "browser"
        ):
            raise pytest.UsageError(f"{item.nodeid} uses Chromium but is not marked browser")
    items.sort(key=lambda item: item.get_closest_marker("timing") is not None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Under xdist, run each `timing` test while no other worker runs a test."""
    room: Room | None = item.config.stash.get(_ROOM, None)
    if room is None:
        return (yield)
    alone = item.get_closest_marker("timing") is not None
    room.enter(alone=alone)
    try:
        return (yield)
    finally:
        if not (alone and nextitem is not None and nextitem.get_closest_marker("timing")):
            room.leave()


_ROOM = pytest.StashKey[Room]()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") and config.option.basetemp:
        # An xdist worker: its basetemp is <the run's basetemp>/popen-gwN, so the lock files
        # sit beside the workers' folders and go when pytest cleans old runs up.
        config.stash[_ROOM] = Room(Path(config.option.basetemp).parent / "alone")


def pytest_unconfigure(config: pytest.Config) -> None:
    room = config.stash.get(_ROOM, None)
    if room is not None:
        room.close()


# -- findings shown in the run's summary ---------------------------------------------------------

# Lines of findings (spam scores, signup medians, fault reports, render measurements) from every
# test of the run, in the order their tests ended. Filled in the process that reports (the
# xdist controller), from each test's user_properties, because a worker's own output is not
# shown.
_FINDINGS: list[str] = []


SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """Where a test writes the README's pictures: docs/screenshots/ with UPDATE_SCREENSHOTS=1,
    else the test's own folder (the picture is still taken, so taking it is tested)."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path


@pytest.fixture
def report_line(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Add a line to the findings printed at the end of the run, passed or failed."""

    def add(line: str) -> None:
        request.node.user_properties.append(("finding", line))

    return add


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _FINDINGS.extend(str(value) for key, value in report.user_properties if key == "finding")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FINDINGS:
        terminalreporter.section("findings")
        for line in _FINDINGS:
            terminalreporter.write_line(line)


# -- SMTP ------------------------------------------------------------------------------------


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A fresh aiosmtpd server per test."""
    with running_sink() as sink:
        yield sink


# -- databases and brokers ---------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'newsletter.db'}"


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Databases]:
    """This test process's PostgreSQL databases (tests/helpers/postgres.py)."""
    try:
        databases = Databases(PG_ADMIN_URL)
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        unavailable("PostgreSQL", exc)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, postgres_databases: Databases) -> Iterator[str]:
    """An empty PostgreSQL database of the test's own, nobody else connected."""
    require_marker(request, "postgres", "PostgreSQL")
    name = postgres_databases.take()
    try:
        yield postgres_databases.url(name)
    finally:
        db.dispose()
        postgres_databases.give_back(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis server this test process may flush databases of.

    TEST_REDIS_URL when the operator names one (scripts/test starts a private server and
    names it); otherwise a redis-server started for this session alone, never a server that
    merely answers on the usual port: the tests FLUSH it.
    """
    named = os.environ.get("TEST_REDIS_URL")
    if named:
        yield named
        return
    server = PrivateRedis(tmp_path_factory.mktemp("redis"), executable=redis_executable())
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        unavailable("Redis", exc)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_server: str) -> Iterator[str]:
    """A Redis database of this test process's own, flushed before and after the test."""
    import redis

    require_marker(request, "redis", "Redis")
    url = worker_database(redis_server, worker_number())
    try:
        client = redis.Redis.from_url(url, socket_timeout=3)
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        unavailable("Redis", exc)
    try:
        yield url
    finally:
        client.flushdb()


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str:
    """The test's database, SQLite or PostgreSQL (see `pytest_generate_tests`)."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `database_url` (the `app` fixture does) runs on SQLite and on
    PostgreSQL, unless it is marked `any_database`: the database plays no part in what it
    checks (rendering, tokens, headers), so it runs once, on SQLite."""
    if "database_url" not in metafunc.fixturenames:
        return
    params = [pytest.param("sqlite", id="sqlite")]
    if metafunc.definition.get_closest_marker("any_database") is None:
        params.append(pytest.param("postgres", id="postgres", marks=pytest.mark.postgres))
    metafunc.parametrize("database_url", params, indirect=True)


# -- the app -------------------------------------------------------------------------------------


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


@pytest.fixture
def run_worker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers for a test; all of them (and an embedded broker) stop at its end."""
    require_marker(request, "slow", "real worker processes")
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
        unavailable("Chromium", f"{CHROMIUM} does not exist (install Debian's chromium)")
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
