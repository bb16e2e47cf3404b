"""The two shapes the product runs in, for tests with a real worker: settings and a live app."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from tests.helpers.apps import base_env, make_app
from tests.helpers.smtp import SmtpSink
from tests.helpers.workers import WorkerProcess

DAY = 2.0  # seconds in a drip day for these tests
TICK = 0.5

# The parameters of a `stack` fixture: the embedded default, and PostgreSQL with Redis.
STACKS = [
    "embedded",
    pytest.param("postgres-redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
]


def stack_env(
    request: pytest.FixtureRequest, tmp_path: Path, smtp_sink: SmtpSink
) -> dict[str, str]:
    """Settings for the stack `request.param` names, with short drip days."""
    extra = {"DRIP_DAY_SECONDS": str(DAY), "DISPATCH_INTERVAL_SECONDS": str(TICK)}
    if request.param == "embedded":
        url = request.getfixturevalue("sqlite_url")
        return base_env(tmp_path, url, smtp_sink, BROKER_URL="embedded", **extra)
    pg = request.getfixturevalue("postgres_url")
    redis = request.getfixturevalue("redis_url")
    return base_env(tmp_path, pg, smtp_sink, BROKER_URL=redis, REDIS_URL=redis, **extra)


def go_live(
    env: dict[str, str], run_worker: Callable[..., WorkerProcess]
) -> tuple[Flask, WorkerProcess]:
    """The app (for requests from the test), the seed sequence, and a running worker with beat."""
    app = make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
    return app, run_worker(env)
