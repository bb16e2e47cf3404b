"""The drip newsletter service: `create_app()` wires configuration, extensions and blueprints."""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from newsletter.config import Settings, load_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app (and its Celery app). No network, no database work, only wiring."""
    settings = settings or load_settings()
    app = Flask(
        __name__,
        instance_path=str(settings.instance_dir),
        template_folder="web/templates",
        static_folder="web/static",
    )
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=64 * 1024,
        # A form's token works for an hour, then the page must be reloaded.
        WTF_CSRF_TIME_LIMIT=3600,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=settings.site_url.startswith("https://"),
        RATELIMIT_STORAGE_URI=_limiter_storage(settings),
        # The limiter must never take signups down with it: without its store it counts in
        # memory and logs the error.
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_HEADERS_ENABLED=True,
    )
    if settings.trusted_proxies:
        # Behind N reverse proxies the client address (for consent records and rate limits)
        # and the scheme come from their X-Forwarded-* headers.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    _register_extensions(app, settings)
    _configure_clock(settings)
    _register_blueprints(app, settings)
    _register_cli(app)
    _configure_logging()
    _warn_about_proxies(settings)
    return app


def _warn_about_proxies(settings: Settings) -> None:
    if settings.trusted_proxies:
        # Nothing can check that a proxy is really there; a forgotten setting is invisible.
        logging.getLogger(__name__).warning(
            "X-Forwarded-For is trusted from %d proxies; without a proxy in front any client "
            "chooses its own address (rate limits, consent records)",
            settings.trusted_proxies,
        )


def _limiter_storage(settings: Settings) -> str:
    from newsletter.runtime import shared_store_url

    return shared_store_url(settings)


def _register_extensions(app: Flask, settings: Settings) -> None:
    from newsletter.celery_app import celery_init_app
    from newsletter.db import db
    from newsletter.extensions import csrf, limiter, login_manager
    from newsletter.runtime import Runtime

    db.init_app(app, settings.database_url)
    app.extensions["newsletter"] = Runtime.build(settings)
    csrf.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    celery_init_app(app, settings)


def _configure_clock(settings: Settings) -> None:
    from newsletter.clock import clock as shared_clock

    shared_clock.use_offset_file(settings.clock_offset_file)


def _register_blueprints(app: Flask, settings: Settings) -> None:
    from newsletter.web import (
        admin,
        embed,
        errors,
        preferences,
        public,
        reader,
        security,
        tracking,
    )

    errors.register(app)
    security.register(app)
    app.register_blueprint(public.bp)
    app.register_blueprint(embed.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(reader.bp)
    app.register_blueprint(preferences.bp)
    app.register_blueprint(tracking.bp)
    if settings.dev_mail_dir is not None:
        from newsletter.web import devmail

        app.register_blueprint(devmail.bp)


def _register_cli(app: Flask) -> None:
    from newsletter import cli

    cli.register(app)


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
