"""Operator commands: init (twice), import-article, and the side-effect-free factory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from newsletter import create_app
from newsletter.config import load_settings
from newsletter.db import db
from newsletter.models import Delivery, Sequence, Step, Subscriber
from tests.helpers.apps import base_env
from tests.helpers.mailparse import html_of, text_of
from tests.helpers.smtp import SmtpSink


@pytest.fixture
def bare_app(tmp_path: Path, database_url: str) -> Flask:
    """An app whose database has no schema yet."""
    app = create_app(load_settings(base_env(tmp_path, database_url, None)))
    return app


def test_factory_touches_no_database(tmp_path: Path) -> None:
    env = base_env(
        tmp_path, "postgresql://nobody@127.0.0.1:1/none", None, BROKER_URL="redis://127.0.0.1:1/0"
    )
    app = create_app(load_settings(env))  # would raise if it connected anywhere
    assert "public" in app.blueprints and "devmail" not in app.blueprints


def test_init_is_safe_to_run_twice(bare_app: Flask) -> None:
    runner = bare_app.test_cli_runner()
    first = runner.invoke(args=["init"])
    assert first.exit_code == 0, first.output
    assert "emotional-distance" in first.output and "4 parts" in first.output
    second = runner.invoke(args=["init"])
    assert second.exit_code == 0, second.output
    assert "up to date" in second.output
    with db.session() as session:
        assert session.scalar(select(func.count(Sequence.id))) == 1
        assert session.scalar(select(func.count(Step.id))) == 4
        seq = session.scalars(select(Sequence)).one()
        assert seq.is_default
        last = seq.steps[-1]
        assert [r["url"] for r in last.resources] == ["", ""]


def test_import_article_with_parts_and_slug(bare_app: Flask, tmp_path: Path) -> None:
    runner = bare_app.test_cli_runner()
    assert runner.invoke(args=["init"]).exit_code == 0
    article = tmp_path / "habits.md"
    article.write_text(
        "# Small Habits\n\nIntro paragraph one. It has two sentences.\n\n"
        + "".join(
            f"## Habit {n}\n\nHabit {n} body text goes here and explains things.\n\n"
            for n in range(1, 7)
        )
        + "## Further Reading\n\nIf you want more, this goes deeper:\n\n[The long guide](https://example.org/guide)\n"
    )
    result = runner.invoke(
        args=["import-article", str(article), "--slug", "habits", "--parts", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "sequence 'habits'" in result.output and "(3 parts)" in result.output
    with db.session() as session:
        seq = session.scalars(select(Sequence).where(Sequence.slug == "habits")).one()
        assert not seq.is_default
        assert [s.day_offset for s in seq.steps] == [0, 1, 2]
        assert seq.steps[-1].resources == [
            {
                "title": "The long guide",
                "blurb": "If you want more, this goes deeper:",
                "url": "https://example.org/guide",
            }
        ]
    again = runner.invoke(args=["import-article", str(article), "--slug", "habits"])
    assert again.exit_code != 0 and "--replace" in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import-article", "/nonexistent/file.txt"], "does not exist"),
        (["import-article", "{empty}"], "empty"),
        (["import-article", "{ok}", "--slug", "Bad Slug!"], "slug"),
        (["import-article", "{ok}", "--parts", "0"], "0"),
        (["import-article", "{looping}"], "loops are not allowed"),
        (["import-article", "{prying}"], "unknown name 'config'"),
        (["import-article", "{plain_http}"], "'http://e.org/a' must be an https:// or mailto:"),
        (["import-article", "{no_alt}"], "needs alt text"),
        # Checked on the body as each sample subscriber would get it, not only on the source:
        (["import-article", "{personal_link}"], "a personal value cannot be part of a link"),
        (
            ["import-article", "{built_http}"],
            "as sent to a subscriber with no name: link 'http://e.org/a' must be an https://",
        ),
        (
            ["import-article", "{alt_from_name}"],
            "as sent to a subscriber with no name: image 'https://e.org/c.png' needs alt text",
        ),
    ],
)
def test_import_article_errors_change_nothing(
    bare_app: Flask, tmp_path: Path, args: list[str], message: str
) -> None:
    runner = bare_app.test_cli_runner()
    assert runner.invoke(args=["init"]).exit_code == 0
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    ok = tmp_path / "ok.txt"
    ok.write_text("A Title Line\nSome text here.\n")
    looping = tmp_path / "looping.txt"
    looping.write_text("A Title Line\n{% for i in range(9) %}spam{% endfor %} here.\n")
    prying = tmp_path / "prying.txt"
    prying.write_text("A Title Line\nYour key: {{ config }}\n")
    plain_http = tmp_path / "plain_http.md"
    plain_http.write_text("# A Title\n\nSee [this](http://e.org/a).\n")
    no_alt = tmp_path / "no_alt.md"
    no_alt.write_text("# A Title\n\n![](https://e.org/chart.png)\n")
    personal_link = tmp_path / "personal_link.md"
    personal_link.write_text("# A Title\n\nSee [your page](https://e.org/{{ first_name }}).\n")
    built_http = tmp_path / "built_http.md"  # a link only once rendered: none in the source
    built_http.write_text(
        "# A Title\n\nSee [this](http{% if first_name %}{% endif %}://e.org/a).\n"
    )
    alt_from_name = tmp_path / "alt_from_name.md"
    alt_from_name.write_text("# A Title\n\n![{{ first_name }}](https://e.org/c.png)\n")
    files = {"empty": empty, "ok": ok, "looping": looping, "prying": prying}
    files |= {"plain_http": plain_http, "no_alt": no_alt, "personal_link": personal_link}
    files |= {"built_http": built_http, "alt_from_name": alt_from_name}
    args = [a.format(**files) for a in args]
    result = runner.invoke(args=args)
    assert result.exit_code != 0
    assert message in result.output
    with db.session() as session:
        assert session.scalar(select(func.count(Sequence.id))) == 1


@pytest.mark.any_database
def test_send_test_sends_each_part_as_subscribers_get_it(app: Flask, smtp_sink: SmtpSink) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["send-test", "Author@Example.org", "--name", "Zoë", "--confirmation"]
    )
    assert result.exit_code == 0, result.output
    with db.session() as session:
        steps = list(session.scalars(select(Sequence)).one().steps)
        assert session.scalar(select(func.count(Subscriber.id))) == 0  # nobody was signed up
        assert session.scalar(select(func.count(Delivery.id))) == 0  # and nothing recorded
    received = smtp_sink.to("author@example.org")
    subjects = [str(m["Subject"]) for m in received]
    assert subjects[0].startswith("[Test] Confirm your subscription")
    assert subjects[1:] == [f"[Test] {step.subject}" for step in steps]
    for message in received[1:]:
        assert "Hi Zoë," in html_of(message)
        assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert result.output.count("sent part") == len(steps)

    # A proof's personal links belong to nobody: they find nothing, never someone's data.
    client = app.test_client(use_cookies=False)
    links = re.findall(r'href="https://news\.example\.test(/[^"]+)"', html_of(received[1]))
    assert {link.split("/")[1] for link in links} == {"read", "preferences", "unsubscribe"}
    for link in links:
        assert client.get(link).status_code == 404, link
    unsubscribe = next(link for link in links if link.startswith("/unsubscribe/"))
    one_click = client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 404


@pytest.mark.any_database
def test_send_test_of_one_part(app: Flask, smtp_sink: SmtpSink) -> None:
    result = app.test_cli_runner().invoke(args=["send-test", "a@example.org", "--part", "4"])
    assert result.exit_code == 0, result.output
    (only,) = smtp_sink.messages
    assert "Part 4 of 4" in text_of(only) and "KEEP READING" in text_of(only)


@pytest.mark.any_database
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send-test", "not-an-address"], "email"),
        (["send-test", "a@example.org", "--sequence", "nope"], "no sequence 'nope'"),
        (["send-test", "a@example.org", "--part", "9"], "parts 1 to 4, not 9"),
        (["send-test", "a@example.org", "--name", "x" * 200], "first_name"),
    ],
)
def test_send_test_refuses_bad_requests_and_sends_nothing(
    app: Flask, smtp_sink: SmtpSink, args: list[str], message: str
) -> None:
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code != 0
    assert message in result.output
    assert smtp_sink.messages == []


@pytest.mark.any_database
def test_send_test_reports_a_refusal(app: Flask, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.refuse["a@example.org"] = "550 5.1.1 no such user"
    result = app.test_cli_runner().invoke(args=["send-test", "a@example.org"])
    assert result.exit_code != 0
    assert "part 1 not sent" in result.output and "no such user" in result.output
