"""Settings read from the environment (and `.env`), validated once at start.

Every setting of the configuration contract has a default that makes the embedded run work;
a value that is present but wrong stops the process with a message naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from limits import parse_many  # the parser Flask-Limiter itself uses

EMBEDDED = "embedded"
UNSUBSCRIBE_WAIT_CAP_SECONDS = 20.0
# A padded signup answer holds a gunicorn worker for its length; longer would invite a
# slow-request flood and gains nothing.
SIGNUP_ANSWER_MAX_SECONDS = 5.0
SMTP_SECURITY_CHOICES = ("none", "starttls", "tls")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process."""

    instance_dir: Path
    database_url: str
    broker_url: str
    redis_url: str
    smtp_host: str
    smtp_port: int
    smtp_username: str
    smtp_password: str
    smtp_security: str
    smtp_timeout: float
    mail_from: str
    site_url: str
    secret_key: str
    postal_address: str
    drip_day_seconds: float
    dispatch_interval_seconds: float
    confirm_max_age_seconds: int
    claim_timeout_seconds: float
    dispatch_batch_size: int
    dispatch_max_in_flight: int
    dev_mail_dir: Path | None
    signup_rate_limit: str
    trusted_proxies: int
    retry_schedule: tuple[int, ...]
    retry_give_up_seconds: float
    catch_up_grace_seconds: float
    send_batch_size: int
    record_group_size: int
    send_rate_per_second: float
    brake_after_failures: int
    brake_max_pause_seconds: float
    breaker_window: int
    breaker_share: float
    worker_memory_limit_mb: int
    clock_offset_file: Path | None
    reply_to: str | None = None
    unsubscribe_mailto: str | None = None
    dkim_selector: str | None = None
    dkim_private_key_file: Path | None = None
    dkim_domain: str | None = None
    signup_answer_seconds: float = 0.25
    admin_idle_minutes: float = 30.0
    admin_sign_in_limit_per_account: str = "5 per minute; 20 per hour"
    admin_sign_in_limit_per_address: str = "20 per minute; 100 per hour"
    signup_rate_limit_per_address: str = "5 per hour; 10 per day"
    signup_min_fill_seconds: float = 2.0
    embed_origins: tuple[str, ...] = ()
    check_deliverability: bool = False

    @property
    def broker_is_embedded(self) -> bool:
        """True when Celery should use the embedded Redis server."""
        return self.broker_url == EMBEDDED

    @property
    def unsubscribe_wait_seconds(self) -> float:
        """How long an unsubscribe waits for a mail already in its SMTP conversation.

        A conversation lasts at most a few command timeouts; the cap keeps the web request
        well inside a proxy's or gunicorn's own timeout.
        """
        return min(2 * self.smtp_timeout, UNSUBSCRIBE_WAIT_CAP_SECONDS)

    @property
    def max_in_flight(self) -> int:
        """At most this many deliveries are claimed and not yet sent, across all workers.

        Claims are cheap, but a claim older than CLAIM_TIMEOUT_SECONDS is reaped and offered
        again; with a rate limit, no more is claimed than half the timeout can send.
        """
        if self.send_rate_per_second > 0:
            by_rate = int(self.send_rate_per_second * self.claim_timeout_seconds / 2)
            return max(1, min(self.dispatch_max_in_flight, by_rate))
        return self.dispatch_max_in_flight

    @cached_property
    def mail_from_domain(self) -> str:
        """The domain of MAIL_FROM, used for Message-ID and List-Id."""
        return parseaddr(self.mail_from)[1].rpartition("@")[2]


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    value = _number(env, name, default, minimum=minimum)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {env.get(name)!r}")
    return int(value)


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or default
    if value == EMBEDDED and EMBEDDED in schemes:
        return value
    scheme = urlsplit(value).scheme.split("+")[0]
    if scheme not in schemes:
        allowed = ", ".join(s for s in schemes)
        raise ConfigError(f"{name} must be a URL with one of the schemes {allowed}; got {value!r}")
    return value


_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _site_url(env: Mapping[str, str]) -> str:
    value = _url(env, "SITE_URL", "http://127.0.0.1:5000", ("http", "https")).rstrip("/")
    parts = urlsplit(value)
    host = (parts.hostname or "").lower()
    if not host:
        raise ConfigError(f"SITE_URL must name a host, got {value!r}")
    # Links in mail to anywhere but this machine must be https: Gmail and Yahoo honour
    # one-click unsubscribe (RFC 8058) only on an https URI, and a reader's click must not
    # carry their personal token in the clear.
    if parts.scheme == "http" and not (host in _LOOPBACK_HOSTS or host.endswith(".localhost")):
        raise ConfigError(
            f"SITE_URL must be an https:// URL (plain http is for 127.0.0.1 and localhost "
            f"only: one-click unsubscribe needs https), got {value!r}"
        )
    return value


SECRET_KEY_FILE = "secret_key"


def _secret_key(env: Mapping[str, str], instance_dir: Path) -> str:
    value = env.get("SECRET_KEY", "").strip()
    if value:
        if len(value) < 16:
            raise ConfigError("SECRET_KEY must be at least 16 characters long")
        return value
    # The embedded run keeps a generated key in the instance folder (made by scripts/run, see
    # newsletter.instance), so that links in mail already sent stay valid across restarts.
    key_file = instance_dir / SECRET_KEY_FILE
    try:
        return key_file.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"SECRET_KEY is not set: set it (it signs every link in mail), or start the "
            f"embedded run with scripts/run, which keeps a generated one in {key_file}"
        ) from None


def _mail_from(env: Mapping[str, str]) -> str:
    value = (
        env.get("MAIL_FROM", "").strip() or "Emotional Safety Course <course@newsletter.localhost>"
    )
    _, address = parseaddr(value)
    if "@" not in address or "\n" in value or "\r" in value:
        raise ConfigError(
            f"MAIL_FROM must be an address like 'Name <me@example.com>', got {value!r}"
        )
    return value


def _optional_address(env: Mapping[str, str], name: str, *, bare: bool = False) -> str | None:
    """An optional address setting; `bare` ones must be a plain address without a name."""
    value = env.get(name, "").strip()
    if not value:
        return None
    display, address = parseaddr(value)
    if "@" not in address or any(c in value for c in "\r\n") or (bare and display):
        shape = "me@example.com" if bare else "'Name <me@example.com>' or me@example.com"
        raise ConfigError(f"{name} must be an address like {shape}, got {value!r}")
    return address if bare else value


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def _dkim(env: Mapping[str, str]) -> dict[str, Any]:
    selector = env.get("DKIM_SELECTOR", "").strip()
    key_file = env.get("DKIM_PRIVATE_KEY_FILE", "").strip()
    domain = env.get("DKIM_DOMAIN", "").strip()
    if bool(selector) != bool(key_file):
        raise ConfigError("DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE must be set together")
    if selector and not _DNS_NAME.fullmatch(selector):
        raise ConfigError(f"DKIM_SELECTOR must be a DNS label like 'mail2026', got {selector!r}")
    return {
        "dkim_selector": selector or None,
        "dkim_private_key_file": Path(key_file).resolve() if key_file else None,
        "dkim_domain": domain or None,
    }


def _rate_limit(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    try:
        parse_many(value)
    except ValueError:
        message = f"{name} is not a rate limit like '20 per minute': {value!r}"
        raise ConfigError(message) from None
    return value


def _signup_answer_seconds(env: Mapping[str, str]) -> float:
    value = _number(env, "SIGNUP_ANSWER_SECONDS", 0.25, minimum=0.0)
    if value > SIGNUP_ANSWER_MAX_SECONDS:
        raise ConfigError(
            f"SIGNUP_ANSWER_SECONDS must be at most {SIGNUP_ANSWER_MAX_SECONDS:g}, "
            f"got {env.get('SIGNUP_ANSWER_SECONDS')!r}"
        )
    return value


def _embed_origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """EMBED_ORIGINS: the sites whose pages may carry the signup form, as exact origins."""
    origins = []
    for raw in env.get("EMBED_ORIGINS", "").split(","):
        value = raw.strip().rstrip("/")
        if not value:
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise ConfigError(
                f"EMBED_ORIGINS must be comma-separated origins like https://blog.example.com "
                f"(scheme and host, an optional port, no path), got {value!r}"
            )
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(origins)


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1 or 0 (true or false), got {env.get(name)!r}")


def _retry_schedule(env: Mapping[str, str]) -> tuple[int, ...]:
    raw = env.get("RETRY_SCHEDULE", "").strip() or "60,300,1800,7200,21600"
    try:
        delays = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise ConfigError(f"RETRY_SCHEDULE must be comma-separated seconds, got {raw!r}") from None
    if not delays or min(delays) < 1:
        raise ConfigError(f"RETRY_SCHEDULE delays must be at least 1 second, got {raw!r}")
    return delays


def _is_local_host(host: str) -> bool:
    host = host.lower().strip("[]")
    return host in _LOOPBACK_HOSTS or host.endswith(".localhost") or host.startswith("127.")


def _check_plaintext_auth(env: Mapping[str, str], host: str, security: str) -> None:
    """Refuse to send a password in the clear to a relay on another machine."""
    if not env.get("SMTP_USERNAME", "") or security != "none" or _is_local_host(host):
        return
    allowed = env.get("SMTP_ALLOW_PLAINTEXT_AUTH", "").strip().lower()
    if allowed in ("1", "true", "yes"):
        return
    raise ConfigError(
        f"SMTP_USERNAME is set with SMTP_SECURITY=none: the password would cross the network "
        f"to {host} in the clear. Set SMTP_SECURITY to starttls or tls, or, only if that "
        f"network is private, SMTP_ALLOW_PLAINTEXT_AUTH=1"
    )


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, default, minimum=0.0)
    if not 0 < value < 1:
        raise ConfigError(f"{name} must be a share between 0 and 1, like 0.1; got {value:g}")
    return value


def _memory_limit(env: Mapping[str, str]) -> int:
    value = _integer(env, "WORKER_MEMORY_LIMIT_MB", 1024, minimum=0)
    if 0 < value < 256:
        raise ConfigError(
            f"WORKER_MEMORY_LIMIT_MB must be 0 (no limit) or at least 256, got {value}"
        )
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default: the process environment), raising ConfigError."""
    env = os.environ if env is None else env
    instance_dir = Path(env.get("INSTANCE_DIR", "").strip() or "instance").resolve()
    security = env.get("SMTP_SECURITY", "").strip().lower() or "none"
    if security not in SMTP_SECURITY_CHOICES:
        raise ConfigError(f"SMTP_SECURITY must be one of none, starttls, tls; got {security!r}")
    # Only Redis: the broker settings (visibility timeout, fast publish give-up) are Redis's.
    broker_url = _url(env, "BROKER_URL", EMBEDDED, (EMBEDDED, "redis", "rediss"))
    default_redis = broker_url if urlsplit(broker_url).scheme.startswith("redis") else EMBEDDED
    site_url = _site_url(env)
    smtp_host = env.get("SMTP_HOST", "").strip() or "127.0.0.1"
    _check_plaintext_auth(env, smtp_host, security)
    dev_mail = env.get("DEV_MAIL_DIR", "").strip()
    clock_file = env.get("CLOCK_OFFSET_FILE", "").strip()
    return Settings(
        instance_dir=instance_dir,
        database_url=_url(
            env,
            "DATABASE_URL",
            f"sqlite:///{instance_dir / 'newsletter.db'}",
            ("sqlite", "postgresql", "postgres"),
        ),
        broker_url=broker_url,
        redis_url=_url(env, "REDIS_URL", default_redis, (EMBEDDED, "redis", "rediss", "memory")),
        smtp_host=smtp_host,
        smtp_port=_integer(env, "SMTP_PORT", 1025, minimum=1),
        smtp_username=env.get("SMTP_USERNAME", ""),
        smtp_password=env.get("SMTP_PASSWORD", ""),
        smtp_security=security,
        smtp_timeout=_number(env, "SMTP_TIMEOUT_SECONDS", 30.0, minimum=0.1),
        mail_from=_mail_from(env),
        site_url=site_url,
        secret_key=_secret_key(env, instance_dir),
        postal_address=env.get("POSTAL_ADDRESS", "").strip()
        or "Set POSTAL_ADDRESS to your postal address",
        drip_day_seconds=_number(env, "DRIP_DAY_SECONDS", 86400.0, minimum=1.0),
        dispatch_interval_seconds=_number(env, "DISPATCH_INTERVAL_SECONDS", 5.0, minimum=0.1),
        confirm_max_age_seconds=_integer(env, "CONFIRM_MAX_AGE_SECONDS", 7 * 86400, minimum=60),
        claim_timeout_seconds=_number(env, "CLAIM_TIMEOUT_SECONDS", 600.0, minimum=1.0),
        dispatch_batch_size=_integer(env, "DISPATCH_BATCH_SIZE", 500, minimum=1),
        dispatch_max_in_flight=_integer(env, "DISPATCH_MAX_IN_FLIGHT", 5000, minimum=1),
        dev_mail_dir=Path(dev_mail).resolve() if dev_mail else None,
        signup_rate_limit=_rate_limit(env, "SIGNUP_RATE_LIMIT", "20 per minute; 200 per hour"),
        trusted_proxies=_integer(env, "TRUSTED_PROXIES", 0, minimum=0),
        retry_schedule=_retry_schedule(env),
        retry_give_up_seconds=_number(env, "RETRY_GIVE_UP_SECONDS", 3 * 86400.0, minimum=1.0),
        catch_up_grace_seconds=_number(env, "CATCH_UP_GRACE_SECONDS", 4 * 3600.0, minimum=0.0),
        send_batch_size=_integer(env, "SEND_BATCH_SIZE", 200, minimum=1),
        record_group_size=_integer(env, "RECORD_GROUP_SIZE", 10, minimum=1),
        send_rate_per_second=_number(env, "SEND_RATE_PER_SECOND", 0.0, minimum=0.0),
        brake_after_failures=_integer(env, "BRAKE_AFTER_FAILURES", 10, minimum=1),
        brake_max_pause_seconds=_number(env, "BRAKE_MAX_PAUSE_SECONDS", 900.0, minimum=1.0),
        breaker_window=_integer(env, "BREAKER_WINDOW", 100, minimum=10),
        breaker_share=_share(env, "BREAKER_SHARE", 0.1),
        worker_memory_limit_mb=_memory_limit(env),
        clock_offset_file=Path(clock_file).resolve() if clock_file else None,
        reply_to=_optional_address(env, "REPLY_TO"),
        unsubscribe_mailto=_optional_address(env, "UNSUBSCRIBE_MAILTO", bare=True),
        signup_answer_seconds=_signup_answer_seconds(env),
        admin_idle_minutes=_number(env, "ADMIN_IDLE_MINUTES", 30.0, minimum=1.0),
        admin_sign_in_limit_per_account=_rate_limit(
            env, "ADMIN_SIGN_IN_LIMIT_PER_ACCOUNT", "5 per minute; 20 per hour"
        ),
        admin_sign_in_limit_per_address=_rate_limit(
            env, "ADMIN_SIGN_IN_LIMIT_PER_ADDRESS", "20 per minute; 100 per hour"
        ),
        signup_rate_limit_per_address=_rate_limit(
            env, "SIGNUP_RATE_LIMIT_PER_ADDRESS", "5 per hour; 10 per day"
        ),
        signup_min_fill_seconds=_number(env, "SIGNUP_MIN_FILL_SECONDS", 2.0, minimum=0.0),
        embed_origins=_embed_origins(env),
        check_deliverability=_flag(env, "CHECK_DELIVERABILITY"),
        **_dkim(env),
    )
