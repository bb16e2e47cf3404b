"""The step editor, its preview, reordering and publishing through Flask's test client.

Edits go to the draft and reach nobody until published; bad text is refused beside its field
and changes nothing; publishing is refused while a "Keep reading" link has no URL; every
change is audited; every POST needs its CSRF token. SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from newsletter import clock
from newsletter.content import drafts
from newsletter.db import db
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    SequenceVersion,
    Subscriber,
    SubscriberStatus,
    VersionState,
)
from tests.helpers.admin import create_admin, csrf_token, signed_in
from tests.test_admin_sequences import audit_entries, post, seed_id


@pytest.fixture
def editor(app: Flask) -> FlaskClient:
    create_admin(app, "ed@example.org", role="editor")
    return signed_in(app.test_client(), "ed@example.org")


def live_steps() -> list[dict[str, Any]]:
    with db.session() as session:
        sequence = session.scalars(select(Sequence)).one()
        return [
            {"key": s.key, "subject": s.subject, "body_md": s.body_md, "resources": s.resources}
            for s in sequence.steps
        ]


def draft_steps() -> list[dict[str, Any]] | None:
    with db.session() as session:
        sequence = session.scalars(select(Sequence)).one()
        draft = drafts.open_draft(session, sequence)
        return drafts.draft_steps(draft) if draft else None


def step_form(key: str, **changes: Any) -> dict[str, Any]:
    """The editor form of a step as the page fills it, with `changes`."""
    step = next(s for s in (draft_steps() or editor_snapshot()) if s["key"] == key)
    data: dict[str, Any] = {
        "subject": step["subject"],
        "preheader": step["preheader"],
        "day_offset": str(step["day_offset"]),
        "body_md": step["body_md"],
        "teaser": step["teaser"] or "",
        "resources_intro": step["resources_intro"] or "",
        "sample": "0",
    }
    for n, link in enumerate(step["resources"] or []):
        for name in ("title", "blurb", "url"):
            data[f"resources-{n}-{name}"] = link[name]
    data.update(changes)
    return data


def editor_snapshot() -> list[dict[str, Any]]:
    with db.session() as session:
        return list(drafts.snapshot_of(session.scalars(select(Sequence)).one())["steps"])


def step_path(key: str, suffix: str = "") -> str:
    return f"/admin/sequences/{seed_id()}/steps/{key}{suffix}"


def save(client: FlaskClient, key: str, **changes: Any) -> TestResponse:
    return post(client, step_path(key), step_form(key, **changes))


def test_the_editor_shows_the_step_and_framed_previews(app: Flask, editor: FlaskClient) -> None:
    key = live_steps()[0]["key"]
    page = editor.get(step_path(key)).get_data(as_text=True)
    assert 'name="body_md"' in page and 'name="subject"' in page
    assert page.count("<iframe") == 2 and page.count(" sandbox ") == 2
    assert 'width="375"' in page and 'width="700"' in page
    assert "step-editor.js" in page and "<script>" not in page
    frame = editor.get(step_path(key, "/preview"))
    assert frame.status_code == 200 and "Part 1 of" in frame.get_data(as_text=True)
    csp = frame.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox") and "frame-ancestors 'self'" in csp
    assert "script-src 'self'" in csp and frame.headers["X-Frame-Options"] == "SAMEORIGIN"


def test_the_preview_of_unsaved_text_saves_nothing(app: Flask, editor: FlaskClient) -> None:
    key = live_steps()[0]["key"]
    form = step_form(key, body_md="Brand **new** words <script>alert(1)</script>")
    shown = post(editor, step_path(key, "/preview"), form, form=step_path(key))
    html = shown.get_data(as_text=True)
    assert "<strong>new</strong>" in html and "&lt;script&gt;" in html and "<script>" not in html
    assert draft_steps() is None and audit_entries() == []
    refused = editor.post(step_path(key, "/preview"), data=form)
    assert refused.status_code == 400  # no CSRF token


def test_a_bad_preview_lists_its_problems(app: Flask, editor: FlaskClient) -> None:
    key = live_steps()[0]["key"]
    form = step_form(key, body_md="{% for x in first_name %}{{ x }}{% endfor %}")
    shown = post(editor, step_path(key, "/preview"), form, form=step_path(key))
    assert shown.status_code == 200 and "loops are not allowed" in shown.get_data(as_text=True)


def test_a_save_goes_to_the_draft_and_is_audited(app: Flask, editor: FlaskClient) -> None:
    before = live_steps()
    key = before[0]["key"]
    response = save(editor, key, subject="A better subject", body_md="New body.")
    assert response.status_code == 303
    assert live_steps() == before  # nobody gets it until it is published
    draft = draft_steps()
    assert draft is not None and (draft[0]["subject"], draft[0]["body_md"]) == (
        "A better subject",
        "New body.",
    )
    action, target, old, new = audit_entries()[-1]
    assert action == "sequence.step_update" and target.endswith(f"/step:{key}")
    assert old["subject"] == before[0]["subject"] and new["subject"] == "A better subject"
    assert set(new) == {"subject", "body_md"}
    page = editor.get(f"/admin/sequences/{seed_id()}").get_data(as_text=True)
    assert "Draft version 2" in page and "A better subject" in page


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"body_md": "Seven: {{ 7*7 }}"}, "body_md", "arithmetic"),
        ({"body_md": "{% for x in first_name %}{% endfor %}"}, "body_md", "loops"),
        ({"body_md": "[x](javascript:alert(1))"}, "body_md", "https://"),
        ({"subject": "Hi\r\nBcc: all@example.org"}, "subject", "one line"),
        ({"subject": ""}, "subject", "empty"),
        ({"day_offset": "-1"}, "day_offset", "A day from 0"),
        ({"day_offset": "soon"}, "day_offset", "Not a valid integer"),
        ({"resources-0-url": "javascript:alert(1)"}, "resources-0-url", "https://"),
    ],
)
def test_bad_text_is_refused_beside_its_field_and_changes_nothing(
    app: Flask, editor: FlaskClient, changes: dict[str, str], field: str, words: str
) -> None:
    steps = live_steps()
    key = steps[-1]["key"]  # the last part, with its "Keep reading" links
    response = save(editor, key, **changes)
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert f'id="{field}-error"' in page and words in page
    assert draft_steps() is None and live_steps() == steps and audit_entries() == []


def test_links_can_be_added_and_removed_before_saving(app: Flask, editor: FlaskClient) -> None:
    key = live_steps()[-1]["key"]
    count = len(live_steps()[-1]["resources"])
    added = save(editor, key, action="add_link")
    assert added.status_code == 200
    assert f'name="resources-{count}-url"' in added.get_data(as_text=True)
    removed = save(editor, key, action="remove_link:0")
    page = removed.get_data(as_text=True)
    assert count >= 2  # the seed's last part has its links
    assert f'name="resources-{count - 2}-url"' in page
    assert f'name="resources-{count - 1}-url"' not in page
    assert draft_steps() is None  # neither saved anything


def test_parts_move_are_added_and_removed_in_the_draft(app: Flask, editor: FlaskClient) -> None:
    keys = [s["key"] for s in live_steps()]
    path = f"/admin/sequences/{seed_id()}"
    moved = post(editor, f"{path}/steps/{keys[0]}/move", {"direction": "down"}, form=path)
    assert moved.status_code == 303 and moved.headers["Location"].endswith(f"#step-{keys[0]}")
    assert [s["key"] for s in draft_steps() or []] == [keys[1], keys[0], *keys[2:]]
    assert audit_entries()[-1][0] == "sequence.step_move"
    edge = post(editor, f"{path}/steps/{keys[1]}/move", {"direction": "up"}, form=path)
    assert edge.status_code == 303  # already first: nothing moves
    assert [s["key"] for s in draft_steps() or []] == [keys[1], keys[0], *keys[2:]]
    bad = post(editor, f"{path}/steps/{keys[1]}/move", {"direction": "sideways"}, form=path)
    assert bad.status_code == 400
    added = post(editor, f"{path}/steps/add", {"after": keys[0]}, form=path)
    assert added.status_code == 303 and "/steps/" in added.headers["Location"]
    assert len(draft_steps() or []) == len(keys) + 1
    removed = post(editor, f"{path}/steps/{keys[2]}/remove", {}, form=path)
    assert removed.status_code == 303
    assert keys[2] not in [s["key"] for s in draft_steps() or []]
    assert [a[0] for a in audit_entries()][-2:] == ["sequence.step_add", "sequence.step_remove"]
    assert [s["key"] for s in live_steps()] == keys  # all of it is still a draft


def test_publishing_is_refused_while_a_link_has_no_url(app: Flask, editor: FlaskClient) -> None:
    steps = live_steps()
    save(editor, steps[0]["key"], subject="Edited")
    path = f"/admin/sequences/{seed_id()}/publish"
    page = editor.get(path).get_data(as_text=True)
    assert "people are in progress" in page or "nobody is in progress" in page.lower()
    assert "obody gets two parts in one day" in page and "has no URL" in page
    refused = post(editor, path, {})
    assert refused.status_code == 400 and "has no URL" in refused.get_data(as_text=True)
    assert live_steps() == steps
    last = steps[-1]
    links = {
        f"resources-{n}-url": f"https://example.org/read/{n}" for n in range(len(last["resources"]))
    }
    assert save(editor, last["key"], **links).status_code == 303
    published = post(editor, path, {})
    assert published.status_code == 303
    after = live_steps()
    assert after[0]["subject"] == "Edited"
    assert [r["url"] for r in after[-1]["resources"]] == list(links.values())
    action, _, before, new = audit_entries()[-1]
    assert (action, before["version"], new["version"]) == ("sequence.publish", 1, 2)
    assert any("in progress" in sentence for sentence in new["dry_run"])
    with db.session() as session:
        states = session.scalars(select(SequenceVersion.state).order_by(SequenceVersion.number))
        assert list(states) == [VersionState.PUBLISHED, VersionState.PUBLISHED]


def test_a_draft_can_be_discarded(app: Flask, editor: FlaskClient) -> None:
    steps = live_steps()
    save(editor, steps[0]["key"], subject="Never mind")
    path = f"/admin/sequences/{seed_id()}"
    assert post(editor, f"{path}/discard", {}, form=path).status_code == 303
    assert draft_steps() is None and live_steps() == steps
    assert audit_entries()[-1][0] == "sequence.discard"


def test_the_send_window_is_part_of_the_draft(app: Flask, editor: FlaskClient) -> None:
    path = f"/admin/sequences/{seed_id()}/settings"
    data = {"title": "Closer", "send_hour": "8", "send_end_hour": "20", "send_days": ["1", "2"]}
    assert post(editor, path, data).status_code == 303
    with db.session() as session:
        sequence = session.scalars(select(Sequence)).one()
        assert (sequence.title, sequence.send_hour) == ("Closer", 9)  # the window waits
        draft = drafts.open_draft(session, sequence)
        assert draft is not None
        assert draft.snapshot["settings"] == {
            "send_hour": 8,
            "send_end_hour": 20,
            "send_days": "12",
        }
    assert [a[0] for a in audit_entries()] == ["sequence.retitle", "sequence.settings"]


def test_a_test_send_uses_the_draft(app: Flask, editor: FlaskClient, smtp_sink: Any) -> None:
    key = live_steps()[0]["key"]
    save(editor, key, subject="Draft subject")
    response = post(
        editor,
        f"/admin/sequences/{seed_id()}/test-send",
        {"step": key, "email": "me@example.org"},
    )
    assert response.status_code == 303
    (mail,) = smtp_sink.to("me@example.org")
    assert mail["Subject"] == "[Test] Draft subject"


def test_every_editor_post_needs_its_csrf_token(app: Flask, editor: FlaskClient) -> None:
    keys = [s["key"] for s in live_steps()]
    path = f"/admin/sequences/{seed_id()}"
    for target, data in [
        (f"{path}/steps/{keys[0]}", step_form(keys[0], subject="X")),
        (f"{path}/steps/{keys[0]}/move", {"direction": "down"}),
        (f"{path}/steps/{keys[0]}/remove", {}),
        (f"{path}/steps/add", {"after": keys[0]}),
        (f"{path}/publish", {}),
        (f"{path}/discard", {}),
    ]:
        assert editor.post(target, data=data).status_code == 400, target
    assert draft_steps() is None and audit_entries() == []
    token = csrf_token(editor, path)
    assert editor.get(f"{path}/steps/no-such-key").status_code == 404
    assert (
        editor.post(f"{path}/steps/no-such-key/remove", data={"csrf_token": token}).status_code
        == 404
    )


def test_a_publish_while_mail_is_being_sent_is_refused_clearly(
    app: Flask, editor: FlaskClient
) -> None:
    steps = live_steps()
    with db.transaction() as session:
        sequence = session.scalars(select(Sequence)).one()
        person = Subscriber(email="busy@example.org", status=SubscriberStatus.ACTIVE)
        enrollment = Enrollment(
            subscriber=person, sequence=sequence, status=EnrollmentStatus.ACTIVE
        )
        now = clock.now()
        session.add(
            Delivery(
                kind=DeliveryKind.STEP,
                subscriber=person,
                enrollment=enrollment,
                step_id=sequence.steps[0].id,
                due_at=now,
                state=DeliveryState.CLAIMED,
                claimed_at=now,
            )
        )
    last = steps[-1]
    links = {f"resources-{n}-url": "https://example.org/x" for n in range(len(last["resources"]))}
    save(editor, last["key"], **links)
    # Removing part 2 changes the next part of the person whose part 1 is on the wire.
    sequence_path = f"/admin/sequences/{seed_id()}"
    post(editor, f"{sequence_path}/steps/{steps[1]['key']}/remove", {}, form=sequence_path)
    path = f"/admin/sequences/{seed_id()}/publish"
    refused = post(editor, path, {})
    assert refused.status_code == 409
    assert "being sent right now" in refused.get_data(as_text=True)
    assert live_steps() == steps and draft_steps() is not None
    assert [a[0] for a in audit_entries()] == ["sequence.step_update", "sequence.step_remove"]
