"""Settings and an app for one test, built from the test's own values only."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from newsletter import create_app
from newsletter.config import load_settings
from newsletter.migrate import upgrade
from newsletter.runtime import Runtime
from tests.helpers.ports import free_port
from tests.helpers.smtp import SmtpSink


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
        "SIGNUP_RATE_LIMIT_PER_ADDRESS": "1000 per minute",
        # The minimum fill time is tested in test_abuse; other tests send forms at once.
        "SIGNUP_MIN_FILL_SECONDS": "0",
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


def runtime_of(app: Flask) -> Runtime:
    """The app's per-process services (settings, tokens, composer, flow control)."""
    value = app.extensions["newsletter"]
    assert isinstance(value, Runtime)
    return value
