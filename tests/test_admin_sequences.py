"""The sequence pages through Flask's test client: roles, CSRF, field errors that change
nothing, the import preview, settings, the default, test sends and the audit entries.
SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from newsletter.content import drafts
from newsletter.db import db
from newsletter.models import AuditEntry, Sequence, SequenceVersion, Step
from tests.helpers.admin import create_admin, csrf_token, signed_in
from tests.helpers.smtp import SmtpSink
from tests.test_proposal import SEED, seed_text


@pytest.fixture
def editor(app: Flask) -> FlaskClient:
    """A test client signed in as an editor (not an owner)."""
    create_admin(app, "ed@example.org", role="editor")
    return signed_in(app.test_client(), "ed@example.org")


def seed_id() -> int:
    with db.session() as session:
        query = select(Sequence.id).where(Sequence.slug == "emotional-distance")
        return int(session.scalars(query).one())


def audit_entries() -> list[tuple[str, str, Any, Any]]:
    with db.session() as session:
        rows = session.execute(
            select(AuditEntry.action, AuditEntry.target, AuditEntry.before, AuditEntry.after)
            .where(AuditEntry.action.like("sequence.%"))
            .order_by(AuditEntry.id)
        )
        return [tuple(row) for row in rows]


def step_keys() -> list[str]:
    with db.session() as session:
        return [step.key for step in session.scalars(select(Sequence)).one().steps]


def counts() -> tuple[int, int]:
    with db.session() as session:
        return (
            int(session.scalar(select(func.count(Sequence.id))) or 0),
            int(session.scalar(select(func.count(Step.id))) or 0),
        )


def post(
    client: FlaskClient, path: str, data: dict[str, Any], form: str | None = None
) -> TestResponse:
    """POST `data` with the CSRF token of the page at `form` (default: `path`)."""
    token = csrf_token(client, form or path)
    return client.post(path, data={"csrf_token": token, **data})


def test_strangers_are_sent_to_sign_in(app: Flask) -> None:
    client = app.test_client()
    for path in ("/admin/sequences", "/admin/sequences/new", "/admin/sequences/import"):
        response = client.get(path)
        assert response.status_code == 302 and "/admin/sign-in" in response.headers["Location"]


def test_an_editor_sees_the_list(app: Flask, editor: FlaskClient) -> None:
    page = editor.get("/admin/sequences").get_data(as_text=True)
    assert "Emotional Distance" in page and "Default" in page
    assert 'aria-current="page"' in page  # the navigation marks Sequences


def test_a_new_sequence_is_created_and_audited(app: Flask, editor: FlaskClient) -> None:
    response = post(
        editor, "/admin/sequences/new", {"title": "<script>x</script>", "slug": "new-one"}
    )
    assert response.status_code == 303
    page = editor.get("/admin/sequences").get_data(as_text=True)
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x" not in page
    assert audit_entries()[-1][:2] == ("sequence.create", "sequence:new-one")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"title": "T", "slug": "Not a slug"}, "Lower-case"),
        ({"title": "T", "slug": "emotional-distance"}, "exists already"),
        ({"title": "", "slug": "ok"}, "Enter a title."),
    ],
)
def test_a_bad_new_sequence_is_refused_beside_its_field(
    app: Flask, editor: FlaskClient, data: dict[str, str], words: str
) -> None:
    before = counts()
    response = post(editor, "/admin/sequences/new", data)
    assert response.status_code == 400
    assert words in response.get_data(as_text=True)
    assert 'aria-invalid="true"' in response.get_data(as_text=True)
    assert counts() == before and audit_entries() == []


def test_every_change_needs_its_csrf_token(app: Flask, editor: FlaskClient) -> None:
    sequence_id = seed_id()
    before = counts()
    for path, data in [
        ("/admin/sequences/new", {"title": "T", "slug": "t"}),
        ("/admin/sequences/import", {"text": seed_text(), "action": "save", "slug": "x"}),
        (f"/admin/sequences/{sequence_id}/settings", {"title": "Changed", "send_hour": "8"}),
        (f"/admin/sequences/{sequence_id}/default", {}),
        (f"/admin/sequences/{sequence_id}/test-send", {"email": "a@example.org", "step": "1"}),
    ]:
        response = editor.post(path, data=data)
        assert response.status_code == 400, path
    assert counts() == before and audit_entries() == []


def test_an_import_shows_its_parts_then_saves_them(app: Flask, editor: FlaskClient) -> None:
    first = post(editor, "/admin/sequences/import", {"text": seed_text(), "action": "preview"})
    page = first.get_data(as_text=True)
    assert first.status_code == 200
    assert "Reading time" in page and " min</td>" in page and "links without URL" in page
    again = post(
        editor,
        "/admin/sequences/import",
        {"text": seed_text(), "parts": "3", "action": "preview", "title": "Closeness"},
    )
    assert again.get_data(as_text=True).count(" min</td>") == 3
    saved = post(
        editor,
        "/admin/sequences/import",
        {
            "text": seed_text(),
            "parts": "3",
            "action": "save",
            "title": "Closeness",
            "slug": "closeness",
        },
    )
    assert saved.status_code == 303
    with db.session() as session:
        sequence = session.scalars(select(Sequence).where(Sequence.slug == "closeness")).one()
        assert (sequence.title, len(sequence.steps)) == ("Closeness", 3)
    action, target, _, after = audit_entries()[-1]
    assert (action, target, after["parts"]) == ("sequence.import", "sequence:closeness", 3)
    landed = editor.get(saved.headers["Location"]).get_data(as_text=True)
    assert "have no URL yet" in landed


def live_steps(sequence_id: int) -> list[tuple[str, str, str]]:
    with db.session() as session:
        sequence = session.get(Sequence, sequence_id)
        assert sequence is not None
        return [(step.key, step.subject, step.body_md) for step in sequence.steps]


def test_an_import_becomes_the_draft_of_a_sequence_and_nothing_live(
    app: Flask, editor: FlaskClient
) -> None:
    target = seed_id()
    live = live_steps(target)
    with db.transaction() as session:
        sequence = session.get(Sequence, target)
        assert sequence is not None
        assert drafts.open_draft(session, sequence) is None
    text = "# A new course\n\n" + "\n\n".join(
        f"## Day {n}\n\n" + f"Words of part {n}. " * 80 for n in (1, 2, 3, 4, 5)
    )
    shown = post(editor, "/admin/sequences/import", {"text": text, "markdown": "y", "parts": "5"})
    page = shown.get_data(as_text=True)
    assert shown.status_code == 200 and "Save as the sequence's draft" in page
    assert re.search(rf'<option value="{target}">[^<]*</option>', page)
    saved = post(
        editor,
        "/admin/sequences/import",
        {"text": text, "markdown": "y", "parts": "5", "action": "draft", "into": str(target)},
    )
    assert saved.status_code == 303
    assert saved.headers["Location"].endswith(f"/admin/sequences/{target}")
    # The live steps are untouched; the draft holds the article, part N over step N's key.
    assert live_steps(target) == live
    with db.session() as session:
        sequence = session.get(Sequence, target)
        assert sequence is not None
        draft = drafts.open_draft(session, sequence)
        assert draft is not None
        steps = drafts.draft_steps(draft)
    assert [step["key"] for step in steps[:4]] == [key for key, _, _ in live]
    assert len({step["key"] for step in steps}) == 5
    assert all(f"Words of part {n}." in step["body_md"] for n, step in enumerate(steps, 1))
    action, where, _, after = audit_entries()[-1]
    assert (action, where, after) == (
        "sequence.import_draft",
        "sequence:emotional-distance",
        {"parts": 5, "replaced_draft": False},
    )
    landed = editor.get(saved.headers["Location"]).get_data(as_text=True)
    assert "publish the draft with its dry run" in landed
    # A second import replaces that draft, and says so.
    again = post(
        editor,
        "/admin/sequences/import",
        {"text": text, "markdown": "y", "parts": "2", "action": "draft", "into": str(target)},
    )
    assert again.status_code == 303
    assert audit_entries()[-1][3] == {"parts": 2, "replaced_draft": True}
    with db.session() as session:
        sequence = session.get(Sequence, target)
        assert sequence is not None
        draft = drafts.open_draft(session, sequence)
        assert draft is not None and len(drafts.draft_steps(draft)) == 2


@pytest.mark.parametrize(
    ("into", "words"),
    [
        ("0", "Choose the sequence"),
        ("999999", "Not a valid choice"),
        ("1 OR 1=1", "Invalid Choice"),
    ],
)
def test_an_import_into_no_or_an_unknown_sequence_is_refused(
    app: Flask, editor: FlaskClient, into: str, words: str
) -> None:
    before = counts()
    response = post(
        editor, "/admin/sequences/import", {"text": seed_text(), "action": "draft", "into": into}
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 400 and words in page
    assert re.search(r'<p class="error" id="into-error">[^<]+</p>', page)  # beside its field
    assert counts() == before and audit_entries() == []
    with db.session() as session:
        assert session.scalar(select(func.count(SequenceVersion.id))) == 1  # the published one


def test_an_uploaded_article_is_proposed(app: Flask, editor: FlaskClient) -> None:
    token = csrf_token(editor, "/admin/sequences/import")
    response = editor.post(
        "/admin/sequences/import",
        data={
            "csrf_token": token,
            "action": "preview",
            "article": (io.BytesIO(SEED.read_bytes()), "article.txt"),
        },
        content_type="multipart/form-data",
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "parts," in page and "Save as a new sequence" in page
    bad = editor.post(
        "/admin/sequences/import",
        data={"csrf_token": token, "article": (io.BytesIO(b"\xff\xfe\x00bad"), "a.txt")},
        content_type="multipart/form-data",
    )
    assert bad.status_code == 400 and "not UTF-8" in bad.get_data(as_text=True)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"text": "", "action": "preview"}, "empty"),
        ({"text": "[x](http://e.org) text", "markdown": "y", "action": "preview"}, "https://"),
        ({"text": "Some text.", "parts": "0", "action": "preview"}, "From 1"),
        ({"text": "Some text.", "action": "save", "slug": "emotional-distance"}, "exists already"),
        ({"text": "Some text.", "action": "save", "slug": "Bad Slug"}, "Lower-case"),
    ],
)
def test_a_bad_import_is_refused_beside_its_field(
    app: Flask, editor: FlaskClient, data: dict[str, str], words: str
) -> None:
    before = counts()
    response = post(editor, "/admin/sequences/import", data)
    assert response.status_code == 400
    assert words in response.get_data(as_text=True)
    assert counts() == before and audit_entries() == []


def test_settings_are_saved_with_before_and_after(app: Flask, editor: FlaskClient) -> None:
    path = f"/admin/sequences/{seed_id()}/settings"
    response = post(
        editor,
        path,
        {"title": "Closer", "send_hour": "8", "send_end_hour": "20", "send_days": ["1", "2"]},
    )
    assert response.status_code == 303
    action, _, before, after = audit_entries()[-1]
    assert action == "sequence.settings"
    assert (before["send_hour"], after["send_hour"], after["send_days"]) == (9, 8, "12")
    # The window is the draft's until published (tests/test_admin_editor.py).
    assert re.search(
        r'<option selected value="8">|<option value="8" selected>',
        editor.get(path).get_data(as_text=True),
    )


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (
            {"title": "T", "send_hour": "9", "send_end_hour": "9", "send_days": ["1"]},
            "after the send",
        ),
        ({"title": "T", "send_hour": "9", "send_end_hour": "17"}, "at least one day"),
        (
            {"title": "T", "send_hour": "99", "send_end_hour": "17", "send_days": ["1"]},
            "Not a valid choice",
        ),
        (
            {"title": "T", "send_hour": "9", "send_end_hour": "17", "send_days": ["8"]},
            "not a valid choice",
        ),
    ],
)
def test_bad_settings_change_nothing(
    app: Flask, editor: FlaskClient, data: dict[str, Any], words: str
) -> None:
    response = post(editor, f"/admin/sequences/{seed_id()}/settings", data)
    assert response.status_code == 400
    assert words in response.get_data(as_text=True)
    with db.session() as session:
        sequence = session.scalars(select(Sequence)).one()
        assert (sequence.title, sequence.send_hour, sequence.send_days) != ("T", 9, "1")
        assert sequence.send_days == "1234567"
    assert audit_entries() == []


def test_exactly_one_default(app: Flask, editor: FlaskClient) -> None:
    post(editor, "/admin/sequences/import", {"text": seed_text(), "action": "save", "slug": "two"})
    with db.session() as session:
        two = session.scalars(select(Sequence).where(Sequence.slug == "two")).one().id
    response = post(
        editor, f"/admin/sequences/{two}/default", {}, form=f"/admin/sequences/{two}/settings"
    )
    assert response.status_code == 303
    with db.session() as session:
        assert session.scalars(select(Sequence.slug).where(Sequence.is_default)).all() == ["two"]
    assert audit_entries()[-1][0] == "sequence.default"


def test_a_test_send_arrives_and_is_audited(
    app: Flask, editor: FlaskClient, smtp_sink: SmtpSink
) -> None:
    path = f"/admin/sequences/{seed_id()}/test-send"
    data = {"step": step_keys()[1], "email": "me@example.org", "first_name": "Ann"}
    response = post(editor, path, data)
    assert response.status_code == 303
    (mail,) = smtp_sink.to("me@example.org")
    assert str(mail["Subject"]).startswith("[Test] ")
    action, _, _, after = audit_entries()[-1]
    assert (action, after["part"], after["to"]) == ("sequence.test_send", 2, "me@example.org")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"step": "no-such-step", "email": "a@example.org"}, "Not a valid choice"),
        ({"email": "a@example.org", "first_name": "x" * 101}, "longer than 100"),
    ],
)
def test_a_bad_test_send_sends_nothing(
    app: Flask, editor: FlaskClient, smtp_sink: SmtpSink, data: dict[str, str], words: str
) -> None:
    data = {"step": step_keys()[0], **data}
    response = post(editor, f"/admin/sequences/{seed_id()}/test-send", data)
    assert response.status_code == 400
    assert words in response.get_data(as_text=True)
    assert smtp_sink.messages == [] and audit_entries() == []


def test_unknown_sequences_are_404(app: Flask, editor: FlaskClient) -> None:
    for path in ("/admin/sequences/9999", "/admin/sequences/9999/settings"):
        assert editor.get(path).status_code == 404


def test_a_sequence_is_activated_paused_and_resumed(app: Flask, editor: FlaskClient) -> None:
    post(editor, "/admin/sequences/new", {"title": "Later", "slug": "later"})
    with db.session() as session:
        later = session.scalars(select(Sequence).where(Sequence.slug == "later")).one().id
    settings = f"/admin/sequences/{later}/settings"
    refused = post(editor, f"/admin/sequences/{later}/status", {"action": "activate"}, settings)
    assert refused.status_code == 303
    assert "Publish its parts first" in editor.get(settings).get_data(as_text=True)
    seed = f"/admin/sequences/{seed_id()}"
    for action, status in [("pause", "paused"), ("resume", "active")]:
        answer = post(editor, f"{seed}/status", {"action": action}, f"{seed}/settings")
        assert answer.status_code == 303
        with db.session() as session:
            assert (
                session.scalars(
                    select(Sequence.status).where(Sequence.slug == "emotional-distance")
                )
                .one()
                .value
                == status
            )
    assert [a[0] for a in audit_entries()] == [
        "sequence.create",
        "sequence.pause",
        "sequence.resume",
    ]
    bad = post(editor, f"{seed}/status", {"action": "delete"}, f"{seed}/settings")
    assert bad.status_code == 400


def test_a_hostile_article_is_shown_as_text(app: Flask, editor: FlaskClient) -> None:
    article = (
        "# <script>alert(1)</script> \u202eleft\n\nSome words about it, in a paragraph.\n\n"
        "## A second heading\n\nMore words, enough for a part.\n"
    )
    data = {"text": article, "markdown": "y", "action": "preview"}
    shown = post(editor, "/admin/sequences/import", data)
    page = shown.get_data(as_text=True)
    assert shown.status_code == 200, page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    templated = post(editor, "/admin/sequences/import", data | {"text": "# {{ 7*7 }}\n\nWords."})
    assert templated.status_code == 400
    assert "arithmetic" in templated.get_data(as_text=True) and counts()[0] == 1
