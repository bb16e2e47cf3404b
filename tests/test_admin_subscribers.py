"""The subscribers and imports pages through Flask's test client, on SQLite and PostgreSQL:
the table's filters and pages, outsiders' values escaped, the timeline, each action with its
CSRF token and audit entry, the erase confirmation, the CSV export and the import's first steps.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from newsletter import clock
from newsletter.db import db
from newsletter.models import (
    AuditEntry,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    ImportStatus,
    Subscriber,
    SubscriberImport,
    SubscriberStatus,
)
from tests.helpers.admin import create_admin, csrf_token, signed_in
from tests.helpers.people import add_person, seed_steps, signed_up

HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_AGENT = '"><img src=x onerror=alert(1)>'


def editor(app: Flask) -> FlaskClient:
    create_admin(app, "ed@example.org", role="editor")
    return signed_in(app.test_client(), "ed@example.org")


def audit_actions() -> list[tuple[str, str, object, object]]:
    with db.session() as session:
        return [
            (e.action, e.target, e.before, e.after)
            for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
            if e.action.startswith(("subscriber.", "import."))
        ]


def person(hostile: bool = True) -> int:
    with db.transaction() as session:
        who = signed_up(
            session, "zed@example.org", clock.now() - timedelta(hours=1), first_name=HOSTILE_NAME
        )
        who.consent_user_agent = HOSTILE_AGENT
        return who.id


def test_the_table_shows_people_escaped_and_pages_by_key(app: Flask) -> None:
    client = editor(app)
    person()
    with db.transaction() as session:
        for n in range(60):
            add_person(session, f"p{n:02d}@example.org", clock.now() - timedelta(days=1, minutes=n))
    page = client.get("/admin/subscribers")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert HOSTILE_NAME not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "zed@example.org" in text and 'rel="next"' in text and 'rel="prev"' not in text
    found = re.search(r'href="([^"]+)" rel="next"', text)
    assert found is not None
    second = client.get(html.unescape(found.group(1)))
    second_text = second.get_data(as_text=True)
    assert second.status_code == 200 and 'rel="prev"' in second_text
    assert "p59@example.org" in second_text and "zed@example.org" not in second_text


def test_a_bad_filter_is_answered_beside_it(app: Flask) -> None:
    client = editor(app)
    for query, field in (("sort=password", "sort"), ("state=x", "state"), ("after=junk", "page")):
        page = client.get(f"/admin/subscribers?{query}")
        assert page.status_code == 400
        text = page.get_data(as_text=True)
        assert f'id="{field}-error"' in text or 'class="error-summary"' in text


def test_search_by_prefix(app: Flask) -> None:
    client = editor(app)
    with db.transaction() as session:
        add_person(session, "anna@example.org", clock.now())
        add_person(session, "bert@example.org", clock.now())
    text = client.get("/admin/subscribers?q=ANN").get_data(as_text=True)
    assert "anna@example.org" in text and "bert@example.org" not in text


def test_the_timeline_explains_and_escapes(app: Flask) -> None:
    client = editor(app)
    subscriber_id = person()
    page = client.get(f"/admin/subscribers/{subscriber_id}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert HOSTILE_AGENT not in text and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert HOSTILE_NAME not in text
    assert "Part 1" in text and "goes out with the next dispatch" in text
    assert client.get("/admin/subscribers/99999").status_code == 404


def test_the_timeline_shows_the_send_hour_a_reader_chose(app: Flask) -> None:
    client = editor(app)
    subscriber_id = person(hostile=False)

    def send_hour() -> str:
        page = client.get(f"/admin/subscribers/{subscriber_id}").get_data(as_text=True)
        found = re.search(r"<dt>Send hour</dt><dd>(.*?)</dd>", page, re.S)
        assert found
        return re.sub(r"<[^>]+>", "", found.group(1))

    assert send_hour() == "the series' send window"
    with db.transaction() as session:
        chosen = session.get(Subscriber, subscriber_id)
        assert chosen is not None
        chosen.send_hour = 7
    assert send_hour() == "07:00 in their zone (chosen on their preferences page)"


def test_unsubscribe_needs_its_token_and_is_audited(app: Flask) -> None:
    client = editor(app)
    subscriber_id = person()
    url = f"/admin/subscribers/{subscriber_id}/unsubscribe"
    assert client.post(url).status_code == 400
    token = csrf_token(client, f"/admin/subscribers/{subscriber_id}")
    assert client.post(url, data={"csrf_token": token}).status_code == 303
    with db.session() as session:
        who = session.get(Subscriber, subscriber_id)
        assert who is not None and who.status is SubscriberStatus.UNSUBSCRIBED
    assert audit_actions() == [
        (
            "subscriber.unsubscribe",
            f"subscriber:{subscriber_id}",
            {"status": "active"},
            {"status": "unsubscribed"},
        )
    ]


def test_their_data_downloads_as_json(app: Flask) -> None:
    client = editor(app)
    subscriber_id = person()
    token = csrf_token(client, f"/admin/subscribers/{subscriber_id}")
    answer = client.post(
        f"/admin/subscribers/{subscriber_id}/export.json", data={"csrf_token": token}
    )
    assert answer.status_code == 200
    assert answer.headers["Content-Disposition"].startswith("attachment;")
    data = json.loads(answer.get_data(as_text=True))
    assert data["subscriber"]["first_name"] == HOSTILE_NAME
    assert data["consent"]["user_agent"] == HOSTILE_AGENT
    assert [a[0] for a in audit_actions()] == ["subscriber.export_data"]


def test_erase_asks_first_and_changes_nothing_without_the_tick(app: Flask) -> None:
    client = editor(app)
    subscriber_id = person()
    url = f"/admin/subscribers/{subscriber_id}/erase"
    confirm_page = client.get(url)
    assert confirm_page.status_code == 200 and "cannot be undone" in confirm_page.get_data(
        as_text=True
    )
    token = csrf_token(client, url)
    refused = client.post(url, data={"csrf_token": token})
    assert refused.status_code == 400 and "Tick the box" in refused.get_data(as_text=True)
    with db.session() as session:
        who = session.get(Subscriber, subscriber_id)
        assert who is not None and who.erased_at is None
    assert client.post(url, data={"confirm": "y"}).status_code == 400, "no token, no erasure"
    assert client.post(url, data={"csrf_token": token, "confirm": "y"}).status_code == 303
    with db.session() as session:
        who = session.get(Subscriber, subscriber_id)
        assert who is not None and who.erased_at is not None and who.first_name is None
    actions = audit_actions()
    assert actions == [
        ("subscriber.erase", f"subscriber:{subscriber_id}", {"status": "active"}, {"erased": True})
    ]
    assert "zed@example.org" not in json.dumps(actions)


def test_the_export_streams_the_filtered_table_and_is_audited(app: Flask) -> None:
    client = editor(app)
    person()
    with db.transaction() as session:
        add_person(session, "left@example.org", clock.now(), status=SubscriberStatus.UNSUBSCRIBED)
    answer = client.get("/admin/subscribers/export.csv?state=active")
    assert answer.status_code == 200 and answer.is_streamed
    assert answer.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [r["email"] for r in rows] == ["zed@example.org"]
    assert rows[0]["first_name"] == HOSTILE_NAME, "not a formula: left as it is"
    action, target, _, after = audit_actions()[0]
    assert (action, target) == ("subscriber.export", "subscribers")
    assert isinstance(after, dict) and after["state"] == "active"


def test_an_upload_shows_its_mapping_and_preview_escaped(app: Flask) -> None:
    client = editor(app)
    token = csrf_token(client, "/admin/imports")
    body = "Email,Vorname\r\nann@example.org,<script>alert(1)</script>\r\nbob@example.org,=1+1\r\n"
    answer = client.post(
        "/admin/imports",
        data={"csrf_token": token, "file": (io.BytesIO(body.encode()), "people <b>.csv")},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 303, answer.get_data(as_text=True)
    page = client.get(answer.headers["Location"])
    text = page.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text
    assert "people &lt;b&gt;.csv" in text
    assert '<option selected value="0">' in text or 'value="0" selected' in text
    with db.session() as session:
        entry = session.scalars(select(SubscriberImport)).one()
        assert entry.mapping == {"email": 0, "first_name": 1, "time_zone": None}
    start = f"/admin/imports/{entry.id}/start"
    token = csrf_token(client, f"/admin/imports/{entry.id}")
    refused = client.post(
        start, data={"csrf_token": token, "email": "0", "first_name": "0", "consent": "confirm"}
    )
    assert refused.status_code == 400 and "already used" in refused.get_data(as_text=True)
    refused = client.post(start, data={"csrf_token": token, "email": "0"})
    assert refused.status_code == 400 and "Choose how these people come in" in refused.get_data(
        as_text=True
    )
    with db.session() as session:
        again = session.get(SubscriberImport, entry.id)
        assert again is not None and again.status is ImportStatus.UPLOADED
    assert [a[0] for a in audit_actions()] == ["import.upload"]


def test_an_upload_without_a_token_or_a_file_is_refused(app: Flask) -> None:
    client = editor(app)
    answer = client.post(
        "/admin/imports",
        data={"file": (io.BytesIO(b"email\na@example.org\n"), "a.csv")},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 400
    assert "This page has expired" in answer.get_data(as_text=True), "the app's CSRF answer"
    token = csrf_token(client, "/admin/imports")
    answer = client.post(
        "/admin/imports", data={"csrf_token": token}, content_type="multipart/form-data"
    )
    assert answer.status_code == 400 and "Choose a CSV file." in answer.get_data(as_text=True)
    with db.session() as session:
        assert session.scalars(select(SubscriberImport)).all() == []


def test_a_file_larger_than_the_public_limit_is_accepted(app: Flask) -> None:
    """The app refuses bodies over 64 KB; the import page takes files up to its own limit."""
    client = editor(app)
    token = csrf_token(client, "/admin/imports")
    body = "email,name\n" + "".join(f"p{n}@example.org,Person {n}\n" for n in range(10_000))
    assert len(body) > 200_000
    answer = client.post(
        "/admin/imports",
        data={"csrf_token": token, "file": (io.BytesIO(body.encode()), "big.csv")},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 303


def enrollment_of(subscriber_id: int) -> Enrollment:
    with db.session() as session:
        return session.scalars(
            select(Enrollment)
            .where(Enrollment.subscriber_id == subscriber_id)
            .order_by(Enrollment.id.desc())
        ).first() or pytest.fail("no enrollment")


def test_pause_resume_move_and_restart_from_the_page(app: Flask) -> None:
    client = editor(app)
    subscriber_id = person()
    enrollment = enrollment_of(subscriber_id)
    base = f"/admin/subscribers/{subscriber_id}/enrollments/{enrollment.id}"
    token = csrf_token(client, f"/admin/subscribers/{subscriber_id}")
    assert client.post(f"{base}/pause").status_code == 400, "no token, no pause"
    assert client.post(f"{base}/pause", data={"csrf_token": token}).status_code == 303
    assert enrollment_of(subscriber_id).status is EnrollmentStatus.PAUSED
    page = client.get(f"/admin/subscribers/{subscriber_id}").get_data(as_text=True)
    assert "Paused in “" in page and ">Resume</button>" in page
    refused = client.post(f"{base}/pause", data={"csrf_token": token})
    assert refused.status_code == 400 and "only an active one pauses" in refused.get_data(
        as_text=True
    )
    assert client.post(f"{base}/resume", data={"csrf_token": token}).status_code == 303
    assert enrollment_of(subscriber_id).status is EnrollmentStatus.ACTIVE
    with db.session() as session:
        third = seed_steps(session)[2]
    moved = client.post(f"{base}/move", data={"csrf_token": token, "step": str(third.id)})
    assert moved.status_code == 303
    with db.session() as session:
        waiting = session.scalars(
            select(Delivery).where(
                Delivery.subscriber_id == subscriber_id,
                Delivery.state == DeliveryState.SCHEDULED,
                Delivery.kind == DeliveryKind.STEP,
            )
        ).all()
        assert [d.step_id for d in waiting] == [third.id]
    bad = client.post(f"{base}/move", data={"csrf_token": token, "step": "not-a-step"})
    assert bad.status_code == 400 and "Choose a step from the list." in bad.get_data(as_text=True)
    assert client.post(f"{base}/restart", data={"csrf_token": token}).status_code == 303
    assert enrollment_of(subscriber_id).id != enrollment.id
    assert [a[0] for a in audit_actions()] == [
        "subscriber.pause",
        "subscriber.resume",
        "subscriber.move",
        "subscriber.restart",
    ]


def test_resend_only_a_part_they_had(app: Flask) -> None:
    client = editor(app)
    subscriber_id = person()
    with db.session() as session:
        first = seed_steps(session)[0]
    url = f"/admin/subscribers/{subscriber_id}/resend"
    token = csrf_token(client, f"/admin/subscribers/{subscriber_id}")
    refused = client.post(url, data={"csrf_token": token, "step": str(first.id)})
    assert refused.status_code == 400 and "have not had step 1" in refused.get_data(as_text=True)
    with db.transaction() as session:
        row = session.scalars(
            select(Delivery).where(
                Delivery.subscriber_id == subscriber_id, Delivery.step_id == first.id
            )
        ).one()
        row.state, row.sent_at = DeliveryState.SENT, clock.now()
    assert "Send a part again" in client.get(f"/admin/subscribers/{subscriber_id}").get_data(
        as_text=True
    )
    assert client.post(url, data={"csrf_token": token, "step": str(first.id)}).status_code == 303
    with db.session() as session:
        copies = session.scalars(
            select(Delivery).where(
                Delivery.subscriber_id == subscriber_id, Delivery.kind == DeliveryKind.RESEND
            )
        ).all()
        assert len(copies) == 1 and copies[0].step_id == first.id
    assert [a[0] for a in audit_actions()] == ["subscriber.resend"]
