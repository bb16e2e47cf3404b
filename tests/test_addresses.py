"""Addresses: internationalised domains are sent as IDNA, UTF-8 local parts and homoglyph
domains are refused at signup, and compatibility variants of one address are one subscriber.

Mail goes to a real SMTP server; the signups go through the web form on SQLite and PostgreSQL.
"""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import func, select

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.db import db
from newsletter.delivery import sending
from newsletter.mail import addresses
from newsletter.mail.mime import HeaderError
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    Event,
    Subscriber,
    SubscriberStatus,
)
from tests.helpers.mailparse import link, part_number
from tests.helpers.sending import active_subscriber, claim_all, deliver, delivery
from tests.helpers.smtp import SmtpSink
from tests.helpers.webclient import confirm, post_signup


def count(model: type) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def emails() -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(Subscriber.email).order_by(Subscriber.id)))


def send_due(app: Flask) -> None:
    for delivery_id in claim_all():
        assert deliver(app, delivery_id) is sending.Outcome.SENT


def test_idn_address_signs_up_confirms_and_gets_part_one_as_idna(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    client = app.test_client()
    assert post_signup(client, "Ida@Bücher.de", first_name="Ida")[:2] == (303, "/thanks")
    assert emails() == ["ida@bücher.de"]  # stored in the readable, normalised form

    send_due(app)
    confirmation = smtp_sink.messages[-1]
    assert smtp_sink.handler.envelopes[-1][1] == ["ida@xn--bcher-kva.de"]
    assert confirmation["To"].addresses[0].addr_spec == "ida@xn--bcher-kva.de"
    assert b"xn--bcher-kva.de" in smtp_sink.handler.raw[-1]

    response = confirm(client, link(confirmation, "confirm"))
    assert response.status_code == 200 and "You're in" in response.get_data(as_text=True)
    send_due(app)
    part_one = smtp_sink.messages[-1]
    assert part_number(part_one)[0] == 1
    assert smtp_sink.handler.envelopes[-1][1] == ["ida@xn--bcher-kva.de"]
    assert part_one["To"].addresses[0].addr_spec == "ida@xn--bcher-kva.de"
    assert part_one["To"].addresses[0].display_name == "Ida"


@pytest.mark.any_database
@pytest.mark.parametrize(
    "address",
    [
        "zoë@example.org",  # UTF-8 local part: would need SMTPUTF8
        "usеr@example.org",  # a Cyrillic е among Latin letters
        "用户@例子.中国",
    ],
)
def test_utf8_local_part_is_refused_at_signup_and_writes_nothing(app: Flask, address: str) -> None:
    status, location, body = post_signup(app.test_client(), address)
    assert (status, location) == (400, "")
    assert "part before the @ has only plain letters" in body
    for model in (Subscriber, Enrollment, Delivery, Event):
        assert count(model) == 0, f"{model.__name__} written for {address!r}"


def test_variants_of_one_address_are_one_subscriber(app: Flask) -> None:
    client = app.test_client()
    first = post_signup(client, "ann@example.org")
    answers = [
        post_signup(client, variant)
        for variant in (
            "ＡＮＮ＠ＥＸＡＭＰＬＥ．ＯＲＧ",  # fullwidth
            "ａｎｎ@example.org",
            "Ann@Example.ORG",
            " ann@EXAMPLE.org ",
        )
    ]
    assert all(answer == first for answer in answers)
    post_signup(client, "a@bücher.de")
    post_signup(client, "a@xn--bcher-kva.de")  # the same domain, spelt in IDNA
    post_signup(client, "A@BÜCHER.DE")
    assert emails() == ["ann@example.org", "a@bücher.de"]
    with db.session() as session:
        confirmations = session.scalar(
            select(func.count(Delivery.id)).where(Delivery.kind == DeliveryKind.CONFIRM)
        )
    assert confirmations == 2


@pytest.mark.any_database
@pytest.mark.parametrize(
    "address",
    ["a@pаypal.com", "a@xn--pypal-4ve.com", "a@gοogle.com", "a@mail.аpple.com"],
)
def test_domain_label_mixing_scripts_is_refused(app: Flask, address: str) -> None:
    status, _, body = post_signup(app.test_client(), address)
    assert status == 400
    assert "mixes alphabets" in body
    assert count(Subscriber) == 0 and count(Delivery) == 0 and count(Event) == 0


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("a@例え.jp", "a@例え.jp"),  # Han and Hiragana: one writing system
        ("a@ＫＯＲＥＡ한국.kr", "a@korea한국.kr"),  # Latin and Hangul
        ("a@москва.рф", "a@москва.рф"),  # Cyrillic alone
        ("a@ελλάδα.gr", "a@ελλάδα.gr"),
        ("a@straße.de", "a@straße.de"),
        ("a@пример.example.com", "a@пример.example.com"),  # scripts differ only across labels
    ],
)
def test_single_script_and_customary_mixes_are_accepted(raw: str, stored: str) -> None:
    assert addresses.normalise(raw) == stored


def test_ascii_addresses_skip_the_idna_conversion() -> None:
    address = "ann@example.org"
    assert addresses.wire_address(address) is address
    assert addresses.wire_address("a@bücher.de") == "a@xn--bcher-kva.de"
    with pytest.raises(HeaderError, match="SMTPUTF8"):
        addresses.wire_address("zoë@example.org")


def test_a_legacy_utf8_row_fails_its_own_mail_alone(app: Flask, smtp_sink: SmtpSink) -> None:
    """A row stored before local parts were refused fails with a clear error; others go."""
    legacy_id = active_subscriber("legacy@example.org")
    with db.transaction() as session:
        legacy = session.get(Subscriber, legacy_id)
        assert legacy is not None
        legacy.email = "zoë@example.org"
    fine_id = active_subscriber("fine@example.org")
    outcomes = {}
    for delivery_id in claim_all():
        row = delivery(delivery_id)
        if row.kind is DeliveryKind.STEP:
            outcomes[row.subscriber_id] = (deliver(app, delivery_id), delivery_id)
    assert outcomes[fine_id][0] is sending.Outcome.SENT
    assert outcomes[legacy_id][0] is sending.Outcome.FAILED
    failed = delivery(outcomes[legacy_id][1])
    assert failed.state is DeliveryState.FAILED
    assert failed.last_error is not None and "SMTPUTF8" in failed.last_error
    assert [env[1] for env in smtp_sink.handler.envelopes] == [["fine@example.org"]]
    with db.session() as session:
        still = session.get(Subscriber, legacy_id)
        assert still is not None and still.status is SubscriberStatus.ACTIVE


@pytest.mark.any_database
def test_signup_service_refuses_like_the_form(app: Flask) -> None:
    with db.transaction() as session, pytest.raises(subscriptions.SignupError) as caught:
        subscriptions.signup(
            session, subscriptions.SignupRequest(email="ü@example.org"), clock.now()
        )
    assert caught.value.field == "email"
