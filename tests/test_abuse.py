"""The public forms against scripts: rate limits per client and per address (a 429 with our
page), the honeypot and the minimum fill time (silent: the answer a person gets, nothing
stored), the daily cap of confirmation mails through the "send it again" form, and answers
that are the same, byte for byte, whatever the address's state. SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner
from sqlalchemy import func, select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import Delivery, DeliveryKind, Event, Subscriber, Suppression
from newsletter.web import defences
from tests.helpers.apps import base_env, make_app, runtime_of
from tests.helpers.smtp import SmtpSink
from tests.helpers.webclient import CSRF_FIELD, csrf

STATES = ("new", "pending", "active", "unsubscribed", "suppressed")


@pytest.fixture
def build(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> Iterator[Callable[..., Flask]]:
    """An app with some settings of the test's own (the seed sequence imported)."""

    def _build(**extra: str) -> Flask:
        application = make_app(base_env(tmp_path, database_url, smtp_sink, **extra))
        with db.transaction() as session:
            ensure_seed(session)
        return application

    yield _build
    db.dispose()


def count(model: type, *where: object) -> int:
    with db.session() as session:
        query = select(func.count()).select_from(model)
        for condition in where:
            query = query.where(condition)  # type: ignore[arg-type]
        return int(session.scalar(query) or 0)


def confirmations() -> int:
    return count(Delivery, Delivery.kind == DeliveryKind.CONFIRM)


def signup(client: FlaskClient, email: str, **fields: str) -> tuple[int, str, bytes]:
    page = client.get("/").get_data(as_text=True)
    data = {"csrf_token": csrf(client), "email": email, **fields}
    stamp = re.search(r'name="stamp" type="hidden" value="([^"]*)"', page)
    if stamp and "stamp" not in fields:
        data["stamp"] = stamp.group(1)
    response = client.post("/", data=data)
    return response.status_code, response.headers.get("Location", ""), response.get_data()


def resend(client: FlaskClient, email: str, **fields: str) -> tuple[int, str, bytes]:
    data = {"csrf_token": csrf(client, "/thanks"), "email": email, **fields}
    response = client.post("/thanks", data=data)
    return response.status_code, response.headers.get("Location", ""), response.get_data()


# -- rate limits ---------------------------------------------------------------------------------


def test_a_burst_of_signups_from_one_client_is_limited(build: Callable[..., Flask]) -> None:
    app = build(SIGNUP_RATE_LIMIT="3 per minute")
    client = app.test_client()
    for n in range(3):
        assert signup(client, f"reader{n}@example.org")[:2] == (303, "/thanks")
    status, _, body = signup(client, "reader3@example.org")
    assert status == 429
    page = body.decode()
    assert "<h1>Too many requests</h1>" in page and "<main" in page  # our page, not the default
    assert count(Subscriber, Subscriber.email == "reader3@example.org") == 0
    # The "send it again" form draws on the same budget.
    assert resend(client, "reader0@example.org")[0] == 429
    # Another client is not held back by this one.
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert signup(other, "reader3@example.org")[:2] == (303, "/thanks")


def test_one_address_is_limited_whatever_the_client(build: Callable[..., Flask]) -> None:
    app = build(SIGNUP_RATE_LIMIT_PER_ADDRESS="2 per minute")
    clients = []
    for n in range(3):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"192.0.2.{n + 1}"
        clients.append(client)
    assert signup(clients[0], "target@example.org")[0] == 303
    # The address as typed, normalised: case and spaces do not make it another address.
    assert signup(clients[1], " Target@Example.org ")[0] == 303
    assert signup(clients[2], "target@example.org")[0] == 429
    assert signup(clients[2], "someone-else@example.org")[0] == 303


def test_unsubscribe_is_limited_per_link(app: Flask) -> None:
    client = app.test_client()
    with db.transaction() as session:
        subscriptions.signup(
            session, subscriptions.SignupRequest(email="leaver@example.org"), clock.now()
        )
    with db.session() as session:
        subscriber_id = session.scalar(select(Subscriber.id))
    assert subscriber_id is not None
    token = runtime_of(app).tokens.unsubscribe_token(subscriber_id)
    one_click = {"List-Unsubscribe": "One-Click"}
    answers = [client.post(f"/unsubscribe/{token}", data=one_click).status_code for _ in range(11)]
    assert answers == [200] * 10 + [429]


# -- silent rejections ---------------------------------------------------------------------------


def test_the_honeypot_rejects_silently(
    build: Callable[..., Flask], at_time: Callable[[datetime], None]
) -> None:
    app = build()
    client = app.test_client()
    person = signup(client, "person@example.org")
    script = signup(client, "script@example.org", homepage="https://spam.example")
    assert script == person
    assert count(Subscriber, Subscriber.email == "script@example.org") == 0
    assert confirmations() == 1  # the person's only
    # The "send it again" form has one too (past the five minutes, a person would get a mail).
    at_time(clock.now() + timedelta(minutes=10))
    answer = resend(client, "person@example.org", homepage="https://spam.example")
    assert answer[:2] == (303, "/thanks?again=1")
    assert confirmations() == 1


def _stamp_signed_ago(app: Flask, seconds: int) -> str:
    class Past(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - seconds

    signer = Past(app.config["SECRET_KEY"], salt=defences._STAMP_SALT)
    return signer.sign(b"form").decode()


def test_a_form_sent_too_fast_rejects_silently(build: Callable[..., Flask]) -> None:
    app = build(SIGNUP_MIN_FILL_SECONDS="30")
    client = app.test_client()
    person = signup(client, "person@example.org", stamp=_stamp_signed_ago(app, 60))
    assert person[:2] == (303, "/thanks")
    assert count(Subscriber, Subscriber.email == "person@example.org") == 1
    # Sent at once from the page: the stamp is fresh.
    assert signup(client, "fast@example.org") == person
    # No stamp, a forged one, one a few seconds old: the same answer.
    assert signup(client, "nostamp@example.org", stamp="") == person
    forged = _stamp_signed_ago(app, 60)[:-2] + "xx"
    assert signup(client, "forged@example.org", stamp=forged) == person
    assert signup(client, "quick@example.org", stamp=_stamp_signed_ago(app, 5)) == person
    assert count(Subscriber) == 1
    assert confirmations() == 1
    assert count(Event) == 1


def test_the_fill_time_setting(tmp_path: Path) -> None:
    from newsletter.config import ConfigError, load_settings

    env = {"INSTANCE_DIR": str(tmp_path), "SECRET_KEY": "x" * 32}
    assert load_settings(env).signup_min_fill_seconds == 2.0
    assert load_settings(env).signup_rate_limit_per_address == "5 per hour; 10 per day"
    with pytest.raises(ConfigError, match="SIGNUP_MIN_FILL_SECONDS"):
        load_settings(env | {"SIGNUP_MIN_FILL_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="SIGNUP_RATE_LIMIT_PER_ADDRESS"):
        load_settings(env | {"SIGNUP_RATE_LIMIT_PER_ADDRESS": "lots"})


# -- the "send it again" form --------------------------------------------------------------------


def test_the_fourth_confirmation_in_a_day_is_not_sent(
    app: Flask, at_time: Callable[[datetime], None]
) -> None:
    client = app.test_client()
    start = clock.now()
    assert signup(client, "again@example.org")[:2] == (303, "/thanks")
    page = client.get("/thanks").get_data(as_text=True)
    assert 'action="/thanks"' in page and "Send it again" in page
    answers = []
    for n in range(1, 4):
        at_time(start + timedelta(minutes=6 * n))
        answers.append(resend(client, "again@example.org"))
    assert confirmations() == 3  # the signup's, then two resends; the third is over the cap
    assert len(set(answers)) == 1 and answers[0][:2] == (303, "/thanks?again=1")
    assert "a new mail is on its way" in client.get("/thanks?again=1").get_data(as_text=True)
    at_time(start + timedelta(days=1, minutes=1))
    resend(client, "again@example.org")
    assert confirmations() == 4  # a day later, the window has moved on


def test_resend_within_five_minutes_sends_nothing(app: Flask) -> None:
    client = app.test_client()
    signup(client, "again@example.org")
    assert resend(client, "again@example.org")[:2] == (303, "/thanks?again=1")
    assert confirmations() == 1


def test_resend_of_a_bad_address_says_so_and_changes_nothing(app: Flask) -> None:
    client = app.test_client()
    status, _, body = resend(client, "not an address")
    assert status == 400
    page = body.decode()
    assert 'id="resend-email-error"' in page and 'aria-invalid="true"' in page
    assert count(Event) == 0 and confirmations() == 0


# -- answers that reveal nothing -----------------------------------------------------------------


def _make_state(state: str, email: str) -> None:
    now = clock.now() - timedelta(minutes=10)  # past the five minutes between two mails
    if state == "new":
        return
    if state == "suppressed":
        with db.transaction() as session:
            session.add(Suppression(email=email, reason="bounce"))
        return
    with db.transaction() as session:
        subscriptions.signup(session, subscriptions.SignupRequest(email=email), now)
    if state == "pending":
        return
    with db.session() as session:
        subscriber_id = session.scalar(select(Subscriber.id).where(Subscriber.email == email))
    assert subscriber_id is not None
    with db.transaction() as session:
        subscriptions.confirm(session, subscriber_id, email, now, 86400)
    if state == "unsubscribed":
        with db.transaction() as session:
            subscriptions.unsubscribe(session, subscriber_id, now, "page")


def _without_token(body: bytes) -> bytes:
    return CSRF_FIELD.sub('name="csrf_token" type="hidden" value=""', body.decode()).encode()


def test_answers_are_the_same_whatever_the_address_state(app: Flask) -> None:
    for state in STATES:
        _make_state(state, f"{state}@example.org")
    signups = {}
    resends = {}
    pages = {}
    for state in STATES:
        client = app.test_client()
        signups[state] = signup(client, f"{state}@example.org")
        client = app.test_client()
        resends[state] = resend(client, f"{state}@example.org")
        pages[state] = _without_token(client.get(resends[state][1]).get_data())
    assert len(set(signups.values())) == 1, signups
    assert len(set(resends.values())) == 1, resends
    assert len(set(pages.values())) == 1
    assert signups["new"][:2] == (303, "/thanks")
    assert resends["new"][:2] == (303, "/thanks?again=1")
