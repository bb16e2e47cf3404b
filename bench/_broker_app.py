"""The Celery app that `bench/embedded_broker.py` publishes to and runs workers of.

Configured only from environment variables, so the producer and the `celery worker`
subprocess (`celery -A bench._broker_app worker`, cwd = the repository root) build the
same app:

    BENCH_BROKER_URL        the kombu URL of the broker under test
    BENCH_FS_DATA_FOLDER    filesystem transport only: its data_folder_in/out
    BENCH_FS_PROCESSED      filesystem transport only: its processed_folder
    BENCH_COUNTER_FILE      the file each finished task appends one byte to

The settings that shape delivery are those of `newsletter/celery_app.py`, so the numbers
describe the product's configuration, not Celery's defaults.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

_broker_url = os.environ.get("BENCH_BROKER_URL", "memory://")
_transport_options: dict[str, Any] = {}
if _broker_url.startswith("redis"):
    # As in the product. Not for sqla: kombu hands its transport options to create_engine(),
    # which rejects the keyword.
    _transport_options["visibility_timeout"] = 3600
if os.environ.get("BENCH_FS_DATA_FOLDER"):
    _transport_options.update(
        data_folder_in=os.environ["BENCH_FS_DATA_FOLDER"],
        data_folder_out=os.environ["BENCH_FS_DATA_FOLDER"],
        processed_folder=os.environ.get("BENCH_FS_PROCESSED", ""),
    )

app = Celery("bench_broker")
app.conf.update(
    broker_url=_broker_url,
    broker_connection_retry_on_startup=True,
    broker_transport_options=_transport_options,
    # As in newsletter/celery_app.py (its visibility_timeout: above).
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=4,
    worker_hijack_root_logger=False,
)

_counter: tuple[int, int] | None = None  # (pid, fd): a forked pool child opens its own


def _counter_fd() -> int:
    global _counter
    if _counter is None or _counter[0] != os.getpid():
        fd = os.open(os.environ["BENCH_COUNTER_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        _counter = (os.getpid(), fd)
    return _counter[1]


@app.task(name="bench.noop")
def noop() -> None:
    """Do nothing but count: one byte appended, atomically, to the counter file."""
    os.write(_counter_fd(), b".")
