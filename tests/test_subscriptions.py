"""Signup, confirm and unsubscribe through the web edge, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import func, select
from werkzeug.test import TestResponse

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
    Subscriber,
    SubscriberStatus,
)
from newsletter.runtime import Runtime
from tests.helpers.apps import base_env, make_app
from tests.helpers.smtp import SmtpSink
from tests.helpers.webclient import confirm, csrf, post_signup


def rt(app: Flask) -> Runtime:
    value = app.extensions["newsletter"]
    assert isinstance(value, Runtime)
    return value


def subscriber(email: str) -> Subscriber:
    with db.session() as session:
        return session.scalars(select(Subscriber).where(Subscriber.email == email)).one()


def confirmed(client: FlaskClient, email: str) -> Subscriber:
    """Sign `email` up through the form and confirm it through the service."""
    post_signup(client, email)
    sub = subscriber(email)
    with db.transaction() as session:
        subscriptions.confirm(session, sub.id, sub.email, clock.now(), 86400)
    return sub


def count(model: type) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_signup_records_pending_subscriber_with_consent(app: Flask) -> None:
    client = app.test_client()
    status, location, _ = post_signup(
        client, "  Ann@Example.ORG ", first_name="Ann", time_zone="America/Chicago"
    )
    assert (status, location) == (303, "/thanks")
    ann = subscriber("ann@example.org")
    assert ann.status is SubscriberStatus.PENDING
    assert ann.time_zone == "America/Chicago"
    assert ann.first_name == "Ann"
    assert ann.consent_at is not None and ann.consent_ip == "127.0.0.1"
    assert ann.consent_form == "signup-page"
    with db.session() as session:
        confirm = session.scalars(select(Delivery).where(Delivery.subscriber_id == ann.id)).one()
        assert confirm.kind is DeliveryKind.CONFIRM and confirm.state is DeliveryState.SCHEDULED
        enrollment = session.scalars(select(Enrollment)).one()
        assert enrollment.status is EnrollmentStatus.PENDING


def test_same_response_for_new_pending_active_and_unknown_states(app: Flask) -> None:
    client = app.test_client()
    first = post_signup(client, "new@example.org")
    again_pending = post_signup(client, "new@example.org")
    with db.transaction() as session:
        new = session.scalars(select(Subscriber)).one()
        subscriptions.confirm(session, new.id, new.email, clock.now(), 86400)
    again_active = post_signup(client, "new@example.org")
    other = post_signup(client, "other@example.org")
    assert first[:2] == again_pending[:2] == again_active[:2] == other[:2] == (303, "/thanks")
    assert first[2] == again_pending[2] == again_active[2] == other[2]
    # The second signup inside the resend window queued no second confirmation mail.
    with db.session() as session:
        confirmations = session.scalar(
            select(func.count(Delivery.id)).where(Delivery.kind == DeliveryKind.CONFIRM)
        )
    assert confirmations == 2  # one for new@, one for other@


def test_invalid_address_is_an_error_and_writes_nothing(app: Flask) -> None:
    client = app.test_client()
    for bad in ("not-an-address", "a@b", "x@example.org\r\nBcc: evil@example.org", ""):
        status, _, body = post_signup(client, bad)
        assert status == 400
        assert 'role="alert"' in body
    status, _, body = post_signup(client, "ok@example.org", first_name="x" * 101)
    assert status == 400
    assert count(Subscriber) == 0 and count(Delivery) == 0 and count(Event) == 0


@pytest.mark.any_database
def test_signup_without_csrf_token_is_refused(app: Flask) -> None:
    response = app.test_client().post("/", data={"email": "csrf@example.org"})
    assert response.status_code == 400
    assert count(Subscriber) == 0


def test_unknown_time_zone_falls_back_to_utc(app: Flask) -> None:
    post_signup(app.test_client(), "tz@example.org", time_zone="Mars/Olympus_Mons")
    assert subscriber("tz@example.org").time_zone == "UTC"


def test_confirm_get_shows_a_button_and_the_post_confirms(app: Flask) -> None:
    client = app.test_client()
    post_signup(client, "c@example.org")
    sub = subscriber("c@example.org")
    path = f"/confirm/{rt(app).tokens.confirm_token(sub.id, sub.email)}"
    # Mail scanners open every link: the GET (and HEAD) shows a button and changes nothing.
    page = client.get(path)
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and "Confirm your subscription" in body
    assert '<form method="post"' in body and "Confirm my subscription</button>" in body
    assert client.head(path).status_code == 200
    assert subscriber("c@example.org").status is SubscriberStatus.PENDING
    assert count(Enrollment) == 1 and count(Delivery) == 1  # the confirmation mail only

    before = clock.now()
    response = client.post(path, data={"csrf_token": csrf(client, path)})
    assert response.status_code == 200 and "You're in" in response.get_data(as_text=True)
    assert subscriber("c@example.org").status is SubscriberStatus.ACTIVE
    with db.session() as session:
        step_rows = session.scalars(
            select(Delivery).where(Delivery.kind == DeliveryKind.STEP)
        ).all()
    assert len(step_rows) == 1
    assert step_rows[0].step_id is not None
    assert step_rows[0].due_at <= clock.now() and step_rows[0].due_at >= before
    # Confirming twice is harmless: still one scheduled part.
    assert confirm(client, path).status_code == 200
    with db.session() as session:
        assert (
            session.scalar(
                select(func.count(Delivery.id)).where(Delivery.kind == DeliveryKind.STEP)
            )
            == 1
        )


@pytest.mark.any_database
def test_confirm_post_without_the_pages_token_changes_nothing(app: Flask) -> None:
    client = app.test_client()
    post_signup(client, "n@example.org")
    sub = subscriber("n@example.org")
    path = f"/confirm/{rt(app).tokens.confirm_token(sub.id, sub.email)}"
    for data in ({}, {"csrf_token": "forged"}):
        response = app.test_client().post(path, data=data)
        assert response.status_code == 400
        # The person is offered the button again rather than a bare error.
        assert "Confirm my subscription</button>" in response.get_data(as_text=True)
    assert subscriber("n@example.org").status is SubscriberStatus.PENDING
    assert count(Event) == 1  # the signup only


def test_confirm_link_of_someone_who_left_is_refused_on_get(app: Flask) -> None:
    client = app.test_client()
    sub = confirmed(client, "gone@example.org")
    path = f"/confirm/{rt(app).tokens.confirm_token(sub.id, sub.email)}"
    assert client.get(path).status_code == 200  # confirmed already: pressing again is harmless
    with db.transaction() as session:
        subscriptions.unsubscribe(session, sub.id, clock.now(), "page")
    page = client.get(path)
    assert page.status_code == 400 and "no longer valid" in page.get_data(as_text=True)
    assert confirm_post(client, path).status_code == 400
    assert subscriber("gone@example.org").status is SubscriberStatus.UNSUBSCRIBED


def confirm_post(client: FlaskClient, path: str) -> TestResponse:
    """POST to a confirm URL with a valid CSRF token of this client's session."""
    return client.post(path, data={"csrf_token": csrf(client)})


@pytest.mark.any_database
def test_tampered_confirm_link_changes_nothing(app: Flask) -> None:
    client = app.test_client()
    post_signup(client, "t@example.org")
    sub = subscriber("t@example.org")
    token = rt(app).tokens.confirm_token(sub.id, sub.email)
    payload, stamp, signature = token.split(".")
    forged_other_id = rt(app).tokens.confirm_token(sub.id + 1, sub.email).split(".")[0]
    for bad in (
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        f"{forged_other_id}.{stamp}.{signature}",
        "garbage",
        f"{payload}.{stamp}",
    ):
        for response in (client.get(f"/confirm/{bad}"), confirm_post(client, f"/confirm/{bad}")):
            assert response.status_code == 400, bad
            assert "not valid" in response.get_data(as_text=True)
    assert subscriber("t@example.org").status is SubscriberStatus.PENDING


@pytest.mark.any_database
def test_expired_confirm_link_is_refused(app: Flask) -> None:
    client = app.test_client()
    post_signup(client, "old@example.org")
    sub = subscriber("old@example.org")
    settings = rt(app).settings

    class EightDaysAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 8 * 86400

    old = URLSafeTimedSerializer(
        settings.secret_key, salt="confirm-subscription", signer=EightDaysAgo
    )
    token = old.dumps([sub.id, sub.email])
    for response in (client.get(f"/confirm/{token}"), confirm_post(client, f"/confirm/{token}")):
        assert response.status_code == 400
        assert "expired" in response.get_data(as_text=True)
    assert subscriber("old@example.org").status is SubscriberStatus.PENDING


@pytest.mark.any_database
def test_confirm_link_from_another_deployment_is_refused(app: Flask) -> None:
    client = app.test_client()
    post_signup(client, "k@example.org")
    sub = subscriber("k@example.org")
    foreign = URLSafeTimedSerializer("another-secret-key-xxxxxxxx", salt="confirm-subscription")
    path = f"/confirm/{foreign.dumps([sub.id, sub.email])}"
    assert client.get(path).status_code == 400
    assert confirm_post(client, path).status_code == 400
    assert subscriber("k@example.org").status is SubscriberStatus.PENDING


def test_unsubscribe_get_shows_a_button_and_changes_nothing(app: Flask) -> None:
    client = app.test_client()
    sub = confirmed(client, "u@example.org")
    path = f"/unsubscribe/{rt(app).tokens.unsubscribe_token(sub.id)}"
    page = client.get(path)
    assert page.status_code == 200 and "<button" in page.get_data(as_text=True)
    assert subscriber("u@example.org").status is SubscriberStatus.ACTIVE
    response = client.post(path, data={"csrf_token": csrf(client, path)})
    assert response.status_code == 200
    gone = subscriber("u@example.org")
    assert gone.status is SubscriberStatus.UNSUBSCRIBED and gone.unsubscribed_at is not None
    with db.session() as session:
        states = set(
            session.scalars(select(Delivery.state).where(Delivery.subscriber_id == sub.id))
        )
        enrollment = session.scalars(select(Enrollment)).one()
    assert states == {DeliveryState.SKIPPED}
    assert enrollment.status is EnrollmentStatus.STOPPED
    # A second POST (a client retrying the one-click) is harmless.
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200


@pytest.mark.any_database
def test_forged_unsubscribe_token_is_not_found(app: Flask) -> None:
    client = app.test_client()
    post_signup(client, "f@example.org")
    token = rt(app).tokens.unsubscribe_token(subscriber("f@example.org").id)
    assert (
        client.post(f"/unsubscribe/{token}x", data={"List-Unsubscribe": "One-Click"}).status_code
        == 404
    )
    assert client.get("/unsubscribe/nonsense").status_code == 404
    assert subscriber("f@example.org").status is SubscriberStatus.PENDING


def test_unsubscribed_person_can_come_back_through_double_opt_in(app: Flask) -> None:
    client = app.test_client()
    sub = confirmed(client, "back@example.org")
    with db.transaction() as session:
        subscriptions.unsubscribe(session, sub.id, clock.now(), "page")
    post_signup(client, "back@example.org")
    assert subscriber("back@example.org").status is SubscriberStatus.PENDING


def test_consent_ip_comes_from_trusted_proxy_header(
    tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink
) -> None:
    from newsletter.content.sequences import ensure_seed

    proxied = make_app(base_env(tmp_path, sqlite_url, smtp_sink, TRUSTED_PROXIES="1"))
    with db.transaction() as session:
        ensure_seed(session)
    client = proxied.test_client()
    headers = {"X-Forwarded-For": "203.0.113.9"}
    page = client.get("/", headers=headers).get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token
    client.post("/", data={"csrf_token": token.group(1), "email": "p@example.org"}, headers=headers)
    assert subscriber("p@example.org").consent_ip == "203.0.113.9"
