"""Settings: working defaults, and a clear error naming each invalid variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import ConfigError, load_settings
from newsletter.instance import keep_secret_key
from newsletter.schedule import real_days


def test_embedded_defaults(tmp_path: Path) -> None:
    # Reading settings writes nothing: without SECRET_KEY or a kept key it says what to do.
    with pytest.raises(ConfigError, match="SECRET_KEY is not set.*scripts/run"):
        load_settings({"INSTANCE_DIR": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []
    keep_secret_key(tmp_path)  # what scripts/run does first
    settings = load_settings({"INSTANCE_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'newsletter.db'}"
    assert settings.broker_is_embedded and settings.redis_url == "embedded"
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_security) == (
        "127.0.0.1",
        1025,
        "none",
    )
    assert settings.drip_day_seconds == 86400 and real_days(settings.drip_day_seconds)
    # A generated secret key is kept, so links in mail already sent stay valid after restart.
    keep_secret_key(tmp_path)
    assert load_settings({"INSTANCE_DIR": str(tmp_path)}).secret_key == settings.secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("BROKER_URL", "kafka://x"),
        ("REDIS_URL", "http://x"),
        ("SMTP_PORT", "smtp"),
        ("SMTP_PORT", "0"),
        ("SMTP_SECURITY", "ssl3"),
        ("MAIL_FROM", "nobody"),
        ("MAIL_FROM", "A <a@example.org>\r\nBcc: b@example.org"),
        ("SITE_URL", "ftp://example.org"),
        ("SITE_URL", "http://news.example.org"),
        ("SITE_URL", "https://"),
        ("SECRET_KEY", "short"),
        ("DRIP_DAY_SECONDS", "-5"),
        ("DISPATCH_INTERVAL_SECONDS", "often"),
        ("SIGNUP_RATE_LIMIT", "lots"),
        ("BREAKER_SHARE", "1.5"),
        ("BREAKER_SHARE", "0"),
        ("BREAKER_WINDOW", "3"),
        ("ADMIN_IDLE_MINUTES", "0"),
        ("ADMIN_IDLE_MINUTES", "soon"),
        ("ADMIN_SIGN_IN_LIMIT_PER_ACCOUNT", "lots"),
        ("ADMIN_SIGN_IN_LIMIT_PER_ADDRESS", "often"),
    ],
)
def test_invalid_setting_names_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({"INSTANCE_DIR": str(tmp_path), "SECRET_KEY": "x" * 32, name: value})


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:5000", "http://localhost:8000/", "http://[::1]:80", "https://e.org"]
)
def test_plain_http_site_url_only_on_this_machine(tmp_path: Path, url: str) -> None:
    settings = load_settings(
        {"INSTANCE_DIR": str(tmp_path), "SECRET_KEY": "x" * 32, "SITE_URL": url}
    )
    assert settings.site_url == url.rstrip("/")


def test_production_values(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "INSTANCE_DIR": str(tmp_path),
            "DATABASE_URL": "postgresql://u@db/newsletter",
            "BROKER_URL": "redis://redis:6379/0",
            "SMTP_SECURITY": "STARTTLS",
            "SITE_URL": "https://news.example.org/",
            "SECRET_KEY": "k" * 40,
            "DRIP_DAY_SECONDS": "5",
        }
    )
    assert settings.redis_url == "redis://redis:6379/0"  # defaults to the broker's Redis
    assert settings.smtp_security == "starttls"
    assert settings.site_url == "https://news.example.org"
    assert not real_days(settings.drip_day_seconds)
    assert not (tmp_path / "secret_key").exists()


def test_web_entry_point_reports_bad_setting(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers.env import ROOT

    result = subprocess.run(
        [sys.executable, "-c", "import web"],
        cwd=ROOT,
        env={"INSTANCE_DIR": str(tmp_path), "SMTP_PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "configuration error: SMTP_PORT must be a number" in result.stderr


def test_password_is_never_sent_in_the_clear_to_another_machine(tmp_path: Path) -> None:
    base = {
        "INSTANCE_DIR": str(tmp_path),
        "SECRET_KEY": "k" * 32,
        "SMTP_USERNAME": "me",
        "SMTP_PASSWORD": "secret",
    }
    remote = {**base, "SMTP_HOST": "smtp.example.org"}
    with pytest.raises(ConfigError, match="SMTP_SECURITY=none.*in the clear"):
        load_settings(remote)
    # Encrypted, local, or explicitly allowed by the operator: fine.
    assert load_settings({**remote, "SMTP_SECURITY": "starttls"}).smtp_username == "me"
    assert load_settings({**base, "SMTP_HOST": "127.0.0.1"}).smtp_username == "me"
    assert load_settings({**base, "SMTP_HOST": "localhost"}).smtp_username == "me"
    allowed = {**remote, "SMTP_ALLOW_PLAINTEXT_AUTH": "1"}
    assert load_settings(allowed).smtp_username == "me"
    # Without a username there is nothing to protect.
    assert load_settings({**base, "SMTP_USERNAME": "", "SMTP_HOST": "relay.example.org"})
