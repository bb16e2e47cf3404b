"""The reader's preferences page with a real worker and beat, a real broker and a real SMTP
server, on the embedded stack (SQLite) and on PostgreSQL with Redis: a pause from the page
stops the parts, catching up skips to the timetable's part, a restart sends the series again
and leaving stops everything; no part ever arrives twice.

A drip day is two seconds here (`tests/helpers/stacks.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from newsletter.db import db
from newsletter.models import Delivery, DeliveryState, Enrollment, EnrollmentStatus
from tests.helpers.apps import runtime_of
from tests.helpers.mailparse import part_number, text_of
from tests.helpers.sending import active_subscriber
from tests.helpers.smtp import SmtpSink
from tests.helpers.stacks import DAY, STACKS, TICK, go_live, stack_env
from tests.helpers.webclient import csrf
from tests.helpers.workers import WorkerProcess

pytestmark = pytest.mark.slow

PARTS = 4  # the seed sequence


@pytest.fixture(params=STACKS)
def live(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    smtp_sink: SmtpSink,
    run_worker: Callable[..., WorkerProcess],
) -> Flask:
    """The app of a stack whose worker (with beat) is running."""
    return go_live(stack_env(request, tmp_path, smtp_sink), run_worker)[0]


def parts(sink: SmtpSink, email: str) -> list[int]:
    return [part_number(m)[0] for m in sink.to(email) if "Part " in text_of(m)]


def wait_until(condition: Callable[[], bool], timeout: float = 90.0) -> None:
    """Poll the database-side `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.1)


def latest_enrollment(subscriber_id: int) -> Enrollment:
    with db.session() as session:
        return session.scalars(
            select(Enrollment)
            .where(Enrollment.subscriber_id == subscriber_id)
            .order_by(Enrollment.id.desc())
        ).first() or pytest.fail("no enrollment")


def claimed(subscriber_id: int) -> bool:
    with db.session() as session:
        return (
            session.scalar(
                select(Delivery.id).where(
                    Delivery.subscriber_id == subscriber_id,
                    Delivery.state == DeliveryState.CLAIMED,
                )
            )
            is not None
        )


def press(app: Flask, client: FlaskClient, subscriber_id: int, action: str, **data: str) -> None:
    """Press a button on the reader's preferences page."""
    path = f"/preferences/{runtime_of(app).tokens.preferences_token(subscriber_id)}"
    fields = {"csrf_token": csrf(client, path), **data}
    response = client.post(f"{path}/{action}", data=fields)
    assert response.status_code in (200, 303), response.get_data(as_text=True)


def test_pause_catch_up_restart_and_leave_from_the_page_through_the_worker(
    live: Flask, smtp_sink: SmtpSink
) -> None:
    client = live.test_client()
    ann = active_subscriber("ann@example.org")
    bob = active_subscriber("bob@example.org")
    cy = active_subscriber("cy@example.org")
    smtp_sink.wait_for(
        lambda _: all(parts(smtp_sink, f"{n}@example.org") for n in ("ann", "bob", "cy")),
        timeout=60,
    )
    press(live, client, ann, "pause", enrollment=str(latest_enrollment(ann).id))
    press(live, client, cy, "leave")
    wait_until(lambda: not claimed(ann) and not claimed(cy))
    at_pause = parts(smtp_sink, "ann@example.org")
    cy_had = parts(smtp_sink, "cy@example.org")
    # Bob finishes meanwhile; Ann (paused) and Cy (gone) get nothing more.
    wait_until(lambda: latest_enrollment(bob).status is EnrollmentStatus.COMPLETED)
    time.sleep(2 * DAY + 4 * TICK)
    assert parts(smtp_sink, "ann@example.org") == at_pause
    assert parts(smtp_sink, "cy@example.org") == cy_had
    assert at_pause[-1] < PARTS

    # Catching up: every part's day went by, so the last part comes next, the rest skipped.
    press(live, client, ann, "resume", enrollment=str(latest_enrollment(ann).id), mode="catch-up")
    press(live, client, bob, "restart", enrollment=str(latest_enrollment(bob).id))
    smtp_sink.wait_for(lambda _: parts(smtp_sink, "ann@example.org")[-1] == PARTS, timeout=60)
    smtp_sink.wait_for(lambda _: len(parts(smtp_sink, "bob@example.org")) == 2 * PARTS, timeout=90)
    time.sleep(2 * DAY + 4 * TICK)  # and nothing more comes
    assert parts(smtp_sink, "ann@example.org") == [*at_pause, PARTS]
    assert parts(smtp_sink, "bob@example.org") == [1, 2, 3, 4, 1, 2, 3, 4]
    assert parts(smtp_sink, "cy@example.org") == cy_had
    assert latest_enrollment(ann).status is EnrollmentStatus.COMPLETED
