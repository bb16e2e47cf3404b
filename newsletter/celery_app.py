"""Celery wired to the Flask app, in the shape the Flask docs recommend."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery import current_app as current_celery_app
from celery.signals import beat_init, celeryd_init, worker_process_init
from flask import Flask
from kombu.entity import Queue

from newsletter import embedded, kombu_compat
from newsletter.audience import figures
from newsletter.config import Settings
from newsletter.db import db
from newsletter.memory import cap_memory


def resolved_broker_url(settings: Settings) -> str:
    """BROKER_URL with `embedded` turned into the embedded server's socket URL."""
    if settings.broker_is_embedded:
        return embedded.broker_url(settings.instance_dir)
    return settings.broker_url


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    """Create the Celery app whose tasks run inside `app`'s context."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    kombu_compat.install()  # a broker restart must not end the worker
    celery_app = Celery(app.name, task_cls=FlaskTask)
    broker = resolved_broker_url(settings)
    celery_app.conf.update(
        broker_url=broker,
        # The celery command line copies the environment's BROKER_URL (the word "embedded",
        # say) into CELERY_BROKER_URL, which outranks broker_url; the read and write URLs are
        # what connections use, and nothing on the command line sets those.
        broker_read_url=broker,
        broker_write_url=broker,
        broker_connection_retry_on_startup=True,
        # Tasks carry ids only and are safe to run twice (the delivery state decides), so a
        # message is acknowledged after the task, and a killed worker's work is redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=4,
        broker_transport_options={
            # No long ETAs ever sit in the broker; this only bounds redelivery of unacked work.
            "visibility_timeout": 3600,
            # Publishing gives up quickly when the broker is away: the rows are already in the
            # database and the next tick (or the reaper) offers them again.
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        # Dispatch ticks have a queue of their own, so a long backlog of send batches cannot
        # hold them back (the worker consumes both queues).
        task_default_queue="celery",
        task_queues=(Queue("celery"), Queue("dispatch")),  # type: ignore[no-untyped-call]
        task_routes={"newsletter.dispatch_due": {"queue": "dispatch"}},
        beat_schedule={
            "dispatch-due-deliveries": {
                "task": "newsletter.dispatch_due",
                "schedule": settings.dispatch_interval_seconds,
                # A tick that waited longer than its interval is superseded by the next one.
                "options": {"expires": max(settings.dispatch_interval_seconds * 2, 5.0)},
            },
            # The dashboard's figures, counted ahead of the readers (audience/figures.py).
            "refresh-figures": {
                "task": "newsletter.refresh_figures",
                "schedule": figures.REFRESH_SECONDS,
                "options": {"expires": figures.REFRESH_SECONDS},
            },
        },
        beat_schedule_filename=str(settings.instance_dir / "celerybeat-schedule"),
        worker_hijack_root_logger=False,
        imports=("newsletter.tasks",),
    )
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    # The signal handlers below read the settings and the Flask app from the Celery app.
    celery_app.newsletter_settings = settings
    celery_app.flask_app = app
    return celery_app


def _settings_of(celery_app: Celery) -> Settings | None:
    found = getattr(celery_app, "newsletter_settings", None)
    return found if isinstance(found, Settings) else None


def _start_embedded_broker(celery_app: Celery) -> None:
    # The process that consumes (a worker, or a lone beat) is the one that must have a broker:
    # it starts the embedded one when it starts, never when a module is imported.
    settings = _settings_of(celery_app)
    if settings is not None and settings.broker_is_embedded:
        embedded.ensure_running(settings.instance_dir)


@celeryd_init.connect
def _broker_for_worker(instance: Any = None, **_: Any) -> None:
    if instance is not None:
        _start_embedded_broker(instance.app)


@beat_init.connect
def _broker_for_beat(sender: Any = None, **_: Any) -> None:
    if sender is not None:
        _start_embedded_broker(sender.app)


@worker_process_init.connect
def _prepare_pool_process(**_: Any) -> None:
    # A forked pool child must not share the parent's pooled database sockets, and it is the
    # one that sends: the memory budget is its own (the main process only supervises).
    flask_app = getattr(current_celery_app, "flask_app", None)
    if isinstance(flask_app, Flask):
        with flask_app.app_context():
            db.dispose()
    settings = _settings_of(current_celery_app)
    if settings is not None and settings.worker_memory_limit_mb:
        cap_memory(settings.worker_memory_limit_mb)
