"""The reader's preferences page (audience/preferences.py, web/preferences.py): reached from a
real mail's link, it sets the time zone and send hour, pauses, resumes (where they left off,
or catching up), restarts, joins or switches series, leaves, downloads and deletes; a GET
changes nothing, forged and cross-purpose tokens are refused, refusals change nothing, and no
change ever brings a second part the same day."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.db import db
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    SequenceStatus,
    Step,
    StopReason,
    Subscriber,
    SubscriberStatus,
    Suppression,
    address_hash,
)
from newsletter.schedule import SendWindow, step_due_at
from newsletter.tokens import TokenError, Tokens
from tests.helpers.apps import runtime_of
from tests.helpers.catalogue import other_sequence
from tests.helpers.mailparse import html_of, text_of
from tests.helpers.sending import active_subscriber, claim_all, deliver
from tests.helpers.smtp import SmtpSink
from tests.helpers.webclient import confirm, csrf

NOON = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # a Wednesday; the seed's window is 09-21
EMAIL = "reader@example.org"


# -- helpers -------------------------------------------------------------------------------------


def send_due(app: Flask) -> None:
    """Send every part due now through the app's own send path."""
    for delivery_id in claim_all():
        deliver(app, delivery_id)


def reader_with_part_one(app: Flask, smtp_sink: SmtpSink, email: str = EMAIL) -> tuple[int, str]:
    """A reader whose part 1 arrived; (subscriber id, their preferences path from the mail)."""
    subscriber_id = active_subscriber(email)
    send_due(app)
    mail = next(m for m in smtp_sink.to(email) if "Part 1 of" in text_of(m))
    match = re.search(r"https?://\S+/preferences/[A-Za-z0-9._\-]+", text_of(mail))
    assert match, text_of(mail)
    path = urlsplit(match.group(0)).path
    assert path in html_of(mail)
    return subscriber_id, path


def state(subscriber_id: int) -> dict[str, Any]:
    """Everything a change could touch: the subscriber, enrollments, deliveries."""
    with db.session() as session:
        sub = session.get(Subscriber, subscriber_id)
        assert sub is not None
        return {
            "subscriber": (sub.email, sub.status, sub.time_zone, sub.send_hour),
            "enrollments": [
                (e.id, e.sequence_id, e.status, e.stop_reason)
                for e in session.scalars(
                    select(Enrollment)
                    .where(Enrollment.subscriber_id == subscriber_id)
                    .order_by(Enrollment.id)
                )
            ],
            "deliveries": [
                (d.id, d.step_id, d.state, d.due_at)
                for d in session.scalars(
                    select(Delivery)
                    .where(Delivery.subscriber_id == subscriber_id)
                    .order_by(Delivery.id)
                )
            ],
        }


def parts(subscriber_id: int) -> list[tuple[int, int, DeliveryState, datetime]]:
    """(enrollment, part, state, due) of each of a reader's part deliveries, in order."""
    with db.session() as session:
        return [
            (d.enrollment_id or 0, position, d.state, d.due_at)
            for d, position in session.execute(
                select(Delivery, Step.position)
                .join(Step, Step.id == Delivery.step_id)
                .where(Delivery.subscriber_id == subscriber_id)
                .order_by(Delivery.id)
            )
        ]


def waiting(subscriber_id: int) -> tuple[int, DeliveryState, datetime]:
    """(part, state, due) of the reader's one open part."""
    open_parts = [
        (pos, st, due)
        for _, pos, st, due in parts(subscriber_id)
        if st in (DeliveryState.SCHEDULED, DeliveryState.HELD, DeliveryState.RETRY)
    ]
    assert len(open_parts) == 1, open_parts
    return open_parts[0]


def enrollment_of(subscriber_id: int) -> int:
    with db.session() as session:
        return (
            session.scalars(
                select(Enrollment.id)
                .where(Enrollment.subscriber_id == subscriber_id)
                .order_by(Enrollment.id.desc())
            ).first()
            or 0
        )


def post(client: FlaskClient, path: str, action: str, **fields: str) -> Any:
    """Press a button of the preferences page (with the page's CSRF token)."""
    data = {"csrf_token": csrf(client, path), **fields}
    return client.post(f"{path}/{action}", data=data)


def page_text(client: FlaskClient, path: str) -> str:
    return client.get(path).get_data(as_text=True)


# -- tokens --------------------------------------------------------------------------------------


def test_a_preferences_token_opens_nothing_else_and_nothing_else_opens_it() -> None:
    tokens = Tokens("secret", 3600)
    prefs = tokens.preferences_token(7)
    assert tokens.read_preferences(prefs) == 7
    for read in (tokens.read_unsubscribe, tokens.read_reader):
        with pytest.raises(TokenError):
            read(prefs)
    with pytest.raises(TokenError):
        tokens.read_confirm(prefs)
    for other in (
        tokens.unsubscribe_token(7),
        tokens.reader_token(7),
        tokens.confirm_token(7, "a@example.org"),
        Tokens("another secret", 3600).preferences_token(7),
        prefs[:-2] + "xx",
    ):
        with pytest.raises(TokenError):
            tokens.read_preferences(other)


def test_forged_and_cross_purpose_links_get_a_clear_page_and_change_nothing(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    client = app.test_client()
    token = csrf(client, path)
    before = state(subscriber_id)
    tokens = runtime_of(app).tokens
    for bad in (
        tokens.unsubscribe_token(subscriber_id),
        tokens.reader_token(subscriber_id),
        tokens.confirm_token(subscriber_id, EMAIL),
        "forged",
    ):
        response = client.get(f"/preferences/{bad}")
        assert response.status_code == 404
        assert "This preferences link is not valid." in response.get_data(as_text=True)
        for action in ("pause", "leave", "delete", "data", "timing"):
            refused = client.post(
                f"/preferences/{bad}/{action}",
                data={"csrf_token": token, "enrollment": str(enrollment_of(subscriber_id))},
            )
            assert refused.status_code == 404
    # A preferences token does not unsubscribe, nor open the archive.
    prefs_token = path.rsplit("/", 1)[1]
    assert client.post(f"/unsubscribe/{prefs_token}").status_code == 404
    assert client.get(f"/read/{prefs_token}").status_code == 404
    assert state(subscriber_id) == before


def test_a_get_of_every_link_in_a_mail_changes_nothing(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    before = state(subscriber_id)
    mail = next(m for m in smtp_sink.to(EMAIL) if "Part 1 of" in text_of(m))
    site = runtime_of(app).settings.site_url
    links = set(re.findall(r'href="([^"]+)"', html_of(mail)))
    links |= set(re.findall(r"https?://\S+", text_of(mail)))
    ours = sorted({urlsplit(u).path for u in links if u.startswith(site)})
    assert path in ours and any(p.startswith("/unsubscribe/") for p in ours)
    client = app.test_client()
    for link in ours + [f"{path}/delete"]:
        assert client.get(link).status_code == 200, link
    assert state(subscriber_id) == before


# -- time zone and send hour --------------------------------------------------------------------


def test_send_hour_is_the_preferred_hour_inside_the_window_else_its_nearest_edge() -> None:
    window = SendWindow(9, 21, frozenset(range(1, 8)))
    assert [window.send_hour(h) for h in (None, 3, 9, 14, 20, 21, 23)] == [
        9,
        9,
        9,
        14,
        20,
        20,
        20,
    ]
    assert SendWindow(6, 24).send_hour(23) == 23
    # DST-correct: 07:00 in Paris is 05:00 UTC in summer and 06:00 UTC in winter.
    for started, utc_hour in (
        (datetime(2026, 6, 1, tzinfo=UTC), 5),
        (datetime(2026, 12, 1, tzinfo=UTC), 6),
    ):
        due = step_due_at(
            started_at=started,
            day_offset=1,
            time_zone="Europe/Paris",
            window=SendWindow(6, 22),
            day_seconds=86400,
            send_hour=7,
        )
        assert due.hour == utc_hour


def test_time_zone_and_send_hour_move_the_next_part_and_the_ones_after(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    assert waiting(subscriber_id) == (
        2,
        DeliveryState.SCHEDULED,
        datetime(2026, 6, 11, 9, tzinfo=UTC),
    )
    client = app.test_client()
    # In New York (UTC-4 in June) part 2 comes on their next day: 07:00 is before the window,
    # so at its opening, 09:00 local.
    response = post(client, path, "timing", time_zone="America/New_York", send_hour="7")
    assert response.status_code == 303
    assert waiting(subscriber_id)[2] == datetime(2026, 6, 11, 13, tzinfo=UTC)
    assert (
        post(client, path, "timing", time_zone="America/New_York", send_hour="15").status_code
        == 303
    )
    assert waiting(subscriber_id)[2] == datetime(2026, 6, 11, 19, tzinfo=UTC)
    assert "Thu 11 Jun, 15:00 (America/New_York)" in page_text(client, path)
    # 23:00 is after the window (it closes at 21:00): its last hour, 20:00 local.
    post(client, path, "timing", time_zone="America/New_York", send_hour="23")
    assert waiting(subscriber_id)[2] == datetime(2026, 6, 12, 0, tzinfo=UTC)
    post(client, path, "timing", time_zone="America/New_York", send_hour="15")
    # Part 2 goes at that hour through the send path, and part 3 follows at the same hour.
    at_time(datetime(2026, 6, 11, 19, tzinfo=UTC))
    send_due(app)
    assert [p for _, p, s, _ in parts(subscriber_id) if s is DeliveryState.SENT] == [1, 2]
    assert waiting(subscriber_id) == (
        3,
        DeliveryState.SCHEDULED,
        datetime(2026, 6, 12, 19, tzinfo=UTC),
    )
    # Back to "when the window opens".
    post(client, path, "timing", time_zone="America/New_York", send_hour="")
    assert waiting(subscriber_id)[2] == datetime(2026, 6, 12, 13, tzinfo=UTC)


def test_bad_time_zone_or_hour_is_refused_beside_the_field_and_changes_nothing(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    client = app.test_client()
    before = state(subscriber_id)
    response = post(client, path, "timing", time_zone="Mars/Olympus", send_hour="10")
    assert response.status_code == 400
    assert 'id="error-time_zone"' in response.get_data(as_text=True)
    assert "Choose a time zone from the list." in response.get_data(as_text=True)
    for hour in ("24", "-1", "noon"):
        response = post(client, path, "timing", time_zone="Europe/Paris", send_hour=hour)
        assert response.status_code == 400
        assert "Choose an hour from the list." in response.get_data(as_text=True)
    assert state(subscriber_id) == before


def test_a_change_while_a_part_is_on_the_wire_is_refused_or_waits_for_tomorrow(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id = active_subscriber(EMAIL)
    path = f"/preferences/{runtime_of(app).tokens.preferences_token(subscriber_id)}"
    claim_all()  # part 1 is claimed by a worker: on the wire
    client = app.test_client()
    before = state(subscriber_id)
    response = post(client, path, "timing", time_zone="Europe/Paris", send_hour="10")
    assert response.status_code == 400
    assert "A part is on its way to you right now" in response.get_data(as_text=True)
    assert state(subscriber_id) == before
    # A restart meanwhile: the new part 1 waits for their next day, never a second today.
    assert (
        post(client, path, "restart", enrollment=str(enrollment_of(subscriber_id))).status_code
        == 303
    )
    assert waiting(subscriber_id)[0] == 1
    assert waiting(subscriber_id)[2] >= datetime(2026, 6, 11, 0, tzinfo=UTC)


# -- pause, resume, restart ----------------------------------------------------------------------


def test_pause_then_resume_where_i_left_off_comes_at_the_next_send_time(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    client = app.test_client()
    enrollment = str(enrollment_of(subscriber_id))
    assert post(client, path, "pause", enrollment=enrollment).status_code == 303
    assert waiting(subscriber_id)[:2] == (2, DeliveryState.HELD)
    assert "Paused" in page_text(client, path)
    # Pausing twice is refused beside the series, and changes nothing.
    before = state(subscriber_id)
    response = post(client, path, "pause", enrollment=enrollment)
    assert response.status_code == 400 and "only an active one pauses" in response.get_data(
        as_text=True
    )
    assert state(subscriber_id) == before
    at_time(datetime(2026, 6, 14, 12, tzinfo=UTC))
    send_due(app)
    assert [m for m in smtp_sink.to(EMAIL) if "Part 2 of" in text_of(m)] == []  # paused
    before = state(subscriber_id)
    response = post(client, path, "resume", enrollment=enrollment, mode="sideways")
    assert response.status_code == 400
    assert "Choose how to resume" in response.get_data(as_text=True)
    assert state(subscriber_id) == before
    assert post(client, path, "resume", enrollment=enrollment, mode="left-off").status_code == 303
    # Part 2, at the next opening of the window (not at once, mid-afternoon).
    assert waiting(subscriber_id) == (
        2,
        DeliveryState.SCHEDULED,
        datetime(2026, 6, 15, 9, tzinfo=UTC),
    )
    with db.session() as session:
        reasons = [
            e.data.get("reason")
            for e in session.scalars(select(Event).where(Event.subscriber_id == subscriber_id))
        ]
    assert "paused by reader" in reasons and "resumed by reader" in reasons


def test_resume_where_i_left_off_keeps_a_time_still_ahead(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    client = app.test_client()
    enrollment = str(enrollment_of(subscriber_id))
    post(client, path, "pause", enrollment=enrollment)
    at_time(NOON + timedelta(hours=2))
    post(client, path, "resume", enrollment=enrollment, mode="left-off")
    assert waiting(subscriber_id) == (
        2,
        DeliveryState.SCHEDULED,
        datetime(2026, 6, 11, 9, tzinfo=UTC),
    )


def test_catch_up_rejoins_the_timetable_and_never_sends_two_parts_a_day(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    client = app.test_client()
    enrollment = str(enrollment_of(subscriber_id))
    post(client, path, "pause", enrollment=enrollment)
    # Resumed the same day: today's part was part 1, so catching up still waits for tomorrow.
    at_time(NOON + timedelta(hours=3))
    post(client, path, "resume", enrollment=enrollment, mode="catch-up")
    assert waiting(subscriber_id) == (
        2,
        DeliveryState.SCHEDULED,
        datetime(2026, 6, 11, 9, tzinfo=UTC),
    )
    post(client, path, "pause", enrollment=enrollment)
    # Two days later (day 2 of the timetable: part 3's day): part 2 is skipped, part 3 now.
    later = datetime(2026, 6, 12, 15, tzinfo=UTC)
    at_time(later)
    assert post(client, path, "resume", enrollment=enrollment, mode="catch-up").status_code == 303
    assert [(p, s) for _, p, s, _ in parts(subscriber_id)] == [
        (1, DeliveryState.SENT),
        (2, DeliveryState.SKIPPED),
        (3, DeliveryState.SCHEDULED),
    ]
    assert later <= waiting(subscriber_id)[2] <= clock.now()  # at once (the clock runs on)
    send_due(app)
    # Part 4 on the next day, at the window's opening.
    assert waiting(subscriber_id) == (
        4,
        DeliveryState.SCHEDULED,
        datetime(2026, 6, 13, 9, tzinfo=UTC),
    )
    sent_days = [m["Date"] for m in smtp_sink.to(EMAIL) if "Part " in text_of(m)]
    assert len(sent_days) == 2


def test_restart_from_part_one_waits_for_tomorrow_when_a_part_came_today(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    client = app.test_client()
    first = enrollment_of(subscriber_id)
    assert post(client, path, "restart", enrollment=str(first)).status_code == 303
    fresh = enrollment_of(subscriber_id)
    assert fresh != first
    assert waiting(subscriber_id) == (
        1,
        DeliveryState.SCHEDULED,
        datetime(2026, 6, 11, 9, tzinfo=UTC),
    )
    at_time(datetime(2026, 6, 13, 12, tzinfo=UTC))
    # A day with no part: a restart sends part 1 at once.
    post(client, path, "restart", enrollment=str(fresh))
    assert datetime(2026, 6, 13, 12, tzinfo=UTC) <= waiting(subscriber_id)[2] <= clock.now()
    # Someone else's enrollment is refused beside nothing of theirs, and changes nothing.
    other = active_subscriber("other@example.org")
    before = state(subscriber_id), state(other)
    response = post(client, path, "restart", enrollment=str(enrollment_of(other)))
    assert response.status_code == 400
    assert "That is not one of your series." in response.get_data(as_text=True)
    for bad in ("", "x", "-1"):
        response = post(client, path, "restart", enrollment=bad)
        assert response.status_code == 400
        assert "That is not one of your series." in response.get_data(as_text=True)
    assert (state(subscriber_id), state(other)) == before


# -- sequences -----------------------------------------------------------------------------------


def test_join_and_switch_among_the_public_sequences(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    second = other_sequence("Second Course")
    third = other_sequence("Third Course")
    draft = other_sequence("Secret Draft", SequenceStatus.DRAFT)
    client = app.test_client()
    page = page_text(client, path)
    assert "Second Course" in page and "Third Course" in page and "Secret Draft" not in page
    before = state(subscriber_id)
    for bad in (str(draft), "99999", "x"):
        response = post(client, path, "sequence", sequence=bad)
        assert response.status_code == 400
        assert "Choose a series from the list." in response.get_data(as_text=True)
    assert state(subscriber_id) == before
    # Join: a second series beside the first; its part 1 waits for tomorrow (part 1 came today).
    assert post(client, path, "sequence", sequence=str(second)).status_code == 303
    with db.session() as session:
        joined = session.scalars(
            select(Enrollment).where(
                Enrollment.subscriber_id == subscriber_id, Enrollment.sequence_id == second
            )
        ).one()
        assert joined.status is EnrollmentStatus.ACTIVE
        first_part = session.scalars(
            select(Delivery).where(Delivery.enrollment_id == joined.id)
        ).one()
        assert first_part.due_at == datetime(2026, 6, 11, 9, tzinfo=UTC)
    response = post(client, path, "sequence", sequence=str(second))
    assert response.status_code == 400 and "You are already in Second Course." in response.get_data(
        as_text=True
    )
    # Switch: the first series stops ("switched"), its waiting part skipped; the third starts.
    seed = enrollment_of(subscriber_id) - 1
    assert post(client, path, "sequence", sequence=str(third), leaving=str(seed)).status_code == 303
    with db.session() as session:
        old = session.get(Enrollment, seed)
        assert old is not None and old.status is EnrollmentStatus.STOPPED
        assert old.stop_reason == StopReason.SWITCHED
        states = {
            d.state
            for d in session.scalars(
                select(Delivery).where(
                    Delivery.enrollment_id == seed, Delivery.kind == DeliveryKind.STEP
                )
            )
        }
        assert states == {DeliveryState.SENT, DeliveryState.SKIPPED}
        sequences = set(
            session.scalars(
                select(Enrollment.sequence_id).where(
                    Enrollment.subscriber_id == subscriber_id,
                    Enrollment.status == EnrollmentStatus.ACTIVE,
                )
            )
        )
    assert sequences == {second, third}


# -- leave, data, delete -------------------------------------------------------------------------


def test_leave_unsubscribes_and_nothing_more_is_sent(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    client = app.test_client()
    response = post(client, path, "leave")
    assert response.status_code == 200 and "unsubscribed" in response.get_data(as_text=True).lower()
    assert state(subscriber_id)["subscriber"][1] is SubscriberStatus.UNSUBSCRIBED
    at_time(datetime(2026, 6, 20, 12, tzinfo=UTC))
    send_due(app)
    assert [m for m in smtp_sink.to(EMAIL) if "Part 2" in text_of(m)] == []
    page = page_text(client, path)
    assert "You have left" in page and "Download my data" in page and "Pause" not in page


def test_download_my_data_is_the_admins_export(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    client = app.test_client()
    response = post(client, path, "data")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith("attachment")
    data = json.loads(response.get_data(as_text=True))
    assert data["subscriber"]["email"] == EMAIL
    assert [d["part"] for d in data["deliveries"] if d["kind"] == "step"] == [1, 2]
    # A GET of the download's address gives nothing.
    assert client.get(f"{path}/data").status_code == 405


def test_delete_me_asks_for_a_click_then_erases_and_the_address_is_never_mailed_again(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    client = app.test_client()
    before = state(subscriber_id)
    confirm_page = client.get(f"{path}/delete")
    assert confirm_page.status_code == 200 and "Yes, delete everything" in confirm_page.get_data(
        as_text=True
    )
    assert state(subscriber_id) == before
    response = post(client, f"{path}/delete", "")  # the confirm page's own form
    assert response.status_code in (404, 405)  # (posting to ".../delete/" is nothing)
    data = {"csrf_token": csrf(client, f"{path}/delete")}
    response = client.post(f"{path}/delete", data=data)
    assert response.status_code == 200 and "You are deleted" in response.get_data(as_text=True)
    with db.session() as session:
        sub = session.get(Subscriber, subscriber_id)
        assert sub is not None and sub.erased_at is not None and EMAIL not in sub.email
        assert session.scalar(
            select(Suppression.id).where(Suppression.email_hash == address_hash(EMAIL))
        )
    # The link now names nobody; a new signup with the address is ignored, nothing is sent.
    assert client.get(path).status_code == 404
    with db.transaction() as session:
        outcome = subscriptions.signup(
            session, subscriptions.SignupRequest(email=EMAIL), clock.now()
        )
    assert outcome is subscriptions.SignupOutcome.IGNORED
    at_time(datetime(2026, 6, 20, 12, tzinfo=UTC))
    sent = len(smtp_sink.messages)
    send_due(app)
    assert len(smtp_sink.messages) == sent


def test_the_confirmed_page_links_to_the_preferences(app: Flask) -> None:
    with db.transaction() as session:
        subscriptions.signup(session, subscriptions.SignupRequest(email=EMAIL), clock.now())
    with db.session() as session:
        subscriber_id = session.scalars(select(Subscriber.id)).one()
    tokens = runtime_of(app).tokens
    client = app.test_client()
    response = confirm(client, f"/confirm/{tokens.confirm_token(subscriber_id, EMAIL)}")
    page = response.get_data(as_text=True)
    assert f'href="/preferences/{tokens.preferences_token(subscriber_id)}"' in page


def test_a_late_series_keeps_the_preferred_hour_after_the_gap() -> None:
    # Started long ago (the timetable's day is past): the part after one sent at 15:00 in New
    # York comes at 15:00 on their next day, not when the half-day gap ends at 03:00.
    due = step_due_at(
        started_at=datetime(2026, 5, 1, 12, tzinfo=UTC),
        day_offset=2,
        time_zone="America/New_York",
        window=SendWindow(9, 21),
        day_seconds=86400,
        previous_sent_at=datetime(2026, 6, 11, 19, tzinfo=UTC),
        send_hour=15,
    )
    assert due == datetime(2026, 6, 12, 19, tzinfo=UTC)


def test_a_part_loaded_too_late_waits_for_the_readers_hour_not_the_windows_opening(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    post(app.test_client(), path, "timing", time_zone="America/New_York", send_hour="15")
    # Five hours after 15:00 in New York (past the catch-up grace), still inside the window.
    at_time(datetime(2026, 6, 12, 0, tzinfo=UTC))
    send_due(app)
    assert waiting(subscriber_id) == (
        2,
        DeliveryState.SCHEDULED,
        datetime(2026, 6, 12, 19, tzinfo=UTC),
    )


def test_catching_up_never_brings_a_part_before_its_day(
    app: Flask, smtp_sink: SmtpSink, at_time: Any
) -> None:
    at_time(NOON)
    subscriber_id, path = reader_with_part_one(app, smtp_sink)
    with db.transaction() as session:
        # Part 2 two days after part 1: a pause and a catch-up the same day keep that day.
        step = session.scalars(select(Step).where(Step.position == 2)).one()
        step.day_offset = 2
        row = session.scalars(
            select(Delivery).where(
                Delivery.step_id == step.id, Delivery.subscriber_id == subscriber_id
            )
        ).one()
        row.due_at = row.first_due_at = datetime(2026, 6, 12, 9, tzinfo=UTC)
    client = app.test_client()
    enrollment = str(enrollment_of(subscriber_id))
    post(client, path, "pause", enrollment=enrollment)
    at_time(NOON + timedelta(hours=2))
    post(client, path, "resume", enrollment=enrollment, mode="catch-up")
    assert waiting(subscriber_id) == (
        2,
        DeliveryState.SCHEDULED,
        datetime(2026, 6, 12, 9, tzinfo=UTC),
    )


def test_one_link_hammered_is_limited_and_another_readers_is_not(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    """Per link: a script working on one reader's page gets our 429 page after 60 requests a
    minute; another reader's page, from the same client, still opens."""
    _, path = reader_with_part_one(app, smtp_sink)
    client = app.test_client()
    statuses = [client.get(path).status_code for _ in range(61)]
    assert statuses == [200] * 60 + [429]
    page = client.get(path).get_data(as_text=True)
    assert "<h1>Too many requests</h1>" in page
    _, other = reader_with_part_one(app, smtp_sink, "other@example.org")
    assert client.get(other).status_code == 200
