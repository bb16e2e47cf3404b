"""The sandbox's bounds: hostile texts are refused when imported, naming what is wrong, and the
worst texts it accepts render within RENDER_MEMORY_BYTES.

Each hostile text below once ran (or would run) in a worker: a `center` or a `%`-format that
builds hundreds of megabytes before any output check, a division that fails only for a
subscriber without a name, a nesting that overflows the parser.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from jinja2.exceptions import SecurityError
from sqlalchemy import func, select

from newsletter.db import db
from newsletter.mail.sandbox import (
    CASE_GROWTH,
    FILTERS,
    MAX_OUTPUT_CHARS,
    MAX_SOURCE_CHARS,
    MAX_VALUE_CHARS,
    RENDER_MEMORY_BYTES,
    AdminTemplateError,
    AdminTemplates,
)
from newsletter.models import Sequence, Step
from tests.helpers.apps import base_env, make_app

# (text, what the refusal must say)
HOSTILE = [
    pytest.param("{{ first_name|center(999999999) }}", "the filter 'center' is not", id="center"),
    pytest.param("{{ first_name|indent(999999999, true) }}", "filter 'indent'", id="indent"),
    pytest.param("{{ first_name|wordwrap(1, true, 'x' ) }}", "filter 'wordwrap'", id="wordwrap"),
    pytest.param(
        '{{ first_name|replace("", "' + "x" * 2000 + '") }}',
        # 202,100 characters for the longest name, and its token: 1.8 million in all
        "could build 1,8",
        id="replace-amplified",
    ),
    pytest.param(
        '{{ first_name|replace("", "xxxxxxxxxx")|replace("x", "xxxxxxxxxx")'
        '|replace("x", "xxxxxxxxxx")|replace("x", "xxxxxxxxxx") }}',
        "could build",
        id="replace-chained",
    ),
    pytest.param('{{ "%999999999s" % first_name }}', "arithmetic", id="percent-format"),
    pytest.param('{{ "%999999999s"|format(first_name) }}', "filter 'format'", id="format-filter"),
    pytest.param('{{ "{:>999999999}".format(first_name) }}', "calls (x())", id="format-method"),
    pytest.param("{{ first_name * 999999999 }}", "arithmetic", id="repeat"),
    pytest.param(
        "{{ " + "(" * 10_000 + "first_name" + ")" * 10_000 + " }}",
        "nests deeper than 20",
        id="nested-10000-parentheses",
    ),
    pytest.param("{{ " + "not " * 10_000 + "first_name }}", "nests deeper", id="nested-10000-not"),
    pytest.param("{{ first_name" + "|trim" * 20 + " }}", "nests deeper than 20", id="nested-21"),
    pytest.param(
        "{% if first_name %}x{% endif %}" * 200, "more than 500 template parts", id="many-parts"
    ),
    pytest.param("{{ first_name.__class__ }}", "attributes (x.y) are not", id="attribute"),
    pytest.param("{{ first_name.upper() }}", "calls (x()) are not", id="method-call"),
    pytest.param("{{ range(99999999) }}", "calls (x()) are not", id="global-call"),
    pytest.param("{{ first_name[0] }}", "indexes (x[y]) are not", id="index"),
    pytest.param("{{ first_name[:3] }}", "indexes (x[y]) are not", id="slice"),
    # Fails only for a subscriber without a name: refused for everyone, when written.
    pytest.param("{{ 100 // (first_name|length) }}", "arithmetic", id="division-by-zero"),
    pytest.param("{{ 100 / first_name|length }}", "arithmetic", id="division"),
    pytest.param("{% set n = first_name %}{{ n }}", "assignments ({% set %}) are not", id="set"),
    pytest.param("{% with n = first_name %}{{ n }}{% endwith %}", "{% with %}", id="with"),
    pytest.param("{% filter upper %}{{ first_name }}{% endfilter %}", "{% filter %}", id="filter"),
    pytest.param("{{ [first_name, first_name] }}", "lists are not", id="list"),
    pytest.param("{{ (first_name, first_name) }}", "tuples are not", id="tuple"),
    pytest.param("{{ {'a': first_name} }}", "dicts are not", id="dict"),
    pytest.param("{{ first_name < 'm' }}", "the comparison '<' is not", id="order-comparison"),
    pytest.param("{{ first_name|upper(*x) }}", "argument unpacking", id="unpacking"),
    pytest.param("{{ 'Hi' if first_name }}", "an inline if needs an else", id="if-without-else"),
    pytest.param(
        "{{ first_name|truncate(2) }}",
        "for a subscriber with no name: truncate's length must be a whole number from 3",
        id="truncate-too-short",
    ),
    pytest.param(
        "{{ (1 in first_name) if first_name == '李小龍' else '' }}",
        "for a subscriber with a non-Latin name: the text cannot be rendered",
        id="fails-for-one-sample",
    ),
]

# Texts the sandbox accepts, and what they render for "ann" and for no name.
ACCEPTED = [
    ("Hi {{ first_name }}!", "Hi ann!", "Hi !"),
    ("{{ first_name|default('friend', true)|title }}", "Ann", "Friend"),
    ("{{ first_name|d('you', true)|upper }}", "ANN", "YOU"),
    (
        "{% if first_name %}Hi {{ first_name|capitalize }}{% else %}Hello{% endif %}",
        "Hi Ann",
        "Hello",
    ),
    ("{% if first_name == 'ann' %}A{% elif 'x' in first_name %}B{% else %}C{% endif %}", "A", "C"),
    ("{{ 'Dear ' ~ first_name|trim ~ ',' }}", "Dear ann,", "Dear ,"),
    ("{{ first_name|replace('n', 'N', 1) }}", "aNn", ""),
    (
        "{{ first_name|length }} {{ first_name is string }} {{ first_name is defined }}",
        "3 True True",
        "0 True True",
    ),
    ("{{ 'yes' if first_name and not first_name != 'ann' else 'no' }}", "yes", "no"),
    ("{{ ('friend of ' ~ first_name)|truncate(9, true, '…', 0) }}", "friend o…", "friend o…"),
    ("{{ first_name" + "|trim" * 19 + " }}", "ann", ""),  # as deep as the cap allows
]


@pytest.fixture
def templates() -> AdminTemplates:
    return AdminTemplates()


@pytest.mark.parametrize(("source", "message"), HOSTILE)
def test_hostile_texts_are_refused_when_checked(
    templates: AdminTemplates, source: str, message: str
) -> None:
    assert len(source) <= MAX_SOURCE_CHARS  # refused for what it does, not for its size
    with pytest.raises(AdminTemplateError) as refused:
        templates.check(source)
    assert message in str(refused.value)


@pytest.mark.parametrize(("source", "named", "nameless"), ACCEPTED)
def test_what_the_whitelist_allows_renders(
    templates: AdminTemplates, source: str, named: str, nameless: str
) -> None:
    templates.check(source)
    assert templates.render(source, first_name="ann") == named
    assert templates.render(source, first_name="") == nameless


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[Flask]:
    """An app on SQLite with the shipped sequence: refusals are the same on any database."""
    application = make_app(base_env(tmp_path, f"sqlite:///{tmp_path / 'n.db'}", None))
    assert application.test_cli_runner().invoke(args=["init"]).exit_code == 0
    yield application
    db.dispose()


@pytest.mark.parametrize(("source", "message"), HOSTILE)
def test_hostile_texts_are_refused_at_import_and_change_nothing(
    sqlite_app: Flask, tmp_path: Path, source: str, message: str
) -> None:
    article = tmp_path / "hostile.md"
    text = f"# A Title\n\nA plain first line.\n\nHello {source} and welcome.\n"
    article.write_text(text, encoding="utf-8")
    with db.session() as session:
        before = session.scalar(select(func.count(Step.id)))
    result = sqlite_app.test_cli_runner().invoke(args=["import-article", str(article)])
    assert result.exit_code != 0
    assert "part 1 body_md: " in result.output and message in result.output, result.output
    with db.session() as session:
        assert session.scalar(select(func.count(Sequence.id))) == 1
        assert session.scalar(select(func.count(Step.id))) == before


def test_the_sandbox_refuses_again_at_run_time(templates: AdminTemplates) -> None:
    """Compiled without the check (as if it had a gap), the refused operations still fail."""
    for source in ("{{ first_name.__class__ }}", "{{ first_name[0] }}", "{{ 'x' * 9 }}"):
        template = templates.env.from_string(source)  # no tree check, no worst case
        with pytest.raises(SecurityError, match="not allowed"):
            template.render(first_name="ann")
    for name in ("center", "format", "indent", "wordwrap", "attr", "map"):
        assert name not in templates.env.filters
    assert templates.env.globals == {}


def test_filters_check_their_arguments_before_they_build() -> None:
    """An oversized result is refused before it exists: the refusal allocates next to nothing."""
    wide = "x" * (MAX_OUTPUT_CHARS // CASE_GROWTH + 1)
    thousand = "x" * 1_000
    calls: list[tuple[str, tuple[object, ...]]] = [
        ("replace", (thousand, "x", thousand)),  # 1,000 x 1,000 characters
        ("replace", (thousand, "", thousand)),
        ("upper", (wide,)),
        ("title", (wide,)),
        ("truncate", ("abc", 10**12)),
        ("truncate", ("abc", 2)),  # Jinja's own would fail an assert
        ("truncate", ("abc", 9, False, "...", -1)),
        ("replace", ("abc", "a", "b", -1)),
    ]
    for name, args in calls:
        tracemalloc.start()
        try:
            with pytest.raises(AdminTemplateError, match="longer than|whole number"):
                FILTERS[name](*args)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 50_000, (name, peak)
    assert FILTERS["replace"]("a-b-c", "-", " ", 1) == "a b-c"


def test_case_filters_grow_a_text_by_case_growth_at_most() -> None:
    """The worst case counts a chain of case filters once: true for every code point.

    For each character, the longest text any chain of upper/lower/title/capitalize can make of
    it, found as a fixpoint over all characters that have a case mapping.
    """
    mappings = (str.upper, str.lower, str.title, str.capitalize)
    chars = [chr(c) for c in range(0x110000) if any(m(chr(c)) != chr(c) for m in mappings)]
    longest: dict[str, int] = {}
    for _ in range(10):
        changed = False
        for char in chars:
            grown = max(sum(longest.get(c, 1) for c in m(char)) for m in mappings)
            if grown > longest.get(char, 1):
                longest[char], changed = grown, True
        if not changed:
            break
    assert not changed, "case mappings kept growing"
    assert max(longest.values()) == CASE_GROWTH


def _largest_accepted(templates: AdminTemplates, make: Callable[[int], str]) -> int:
    """The largest n for which the sandbox accepts make(n) (a binary search)."""
    low, high = 1, MAX_SOURCE_CHARS
    templates.check(make(low))
    while low < high:
        middle = (low + high + 1) // 2
        try:
            templates.check(make(middle))
            low = middle
        except AdminTemplateError:
            high = middle - 1
    return low


# The worst texts of each kind: the most outputs, the most parts (what compiling costs), the
# longest replacement, a replacement built and never shown, the most constants a source can
# hold, the longest concatenations of case filters and of replacements, the longest text.
WORST: dict[str, Callable[[int], str]] = {
    "outputs": lambda n: "{{ first_name }}" * n,
    "filtered outputs": lambda n: "{{ first_name|length }}" * n,
    "if blocks": lambda n: "{% if first_name %}x{% else %}y{% endif %}" * n,
    "replacement": lambda n: '{{ first_name|replace("", "' + "x" * n + '") }}',
    "hidden replacement": lambda n: (
        '{% if first_name|replace("", "' + "x" * n + '")|length == 1 %}x{% endif %}'
    ),
    "constants": lambda n: "{{ 1 }}" * n,
    "concatenation": lambda n: "{{ " + " ~ ".join(["first_name|upper|title"] * n) + " }}",
    "concatenated replacements": lambda n: (
        "{{ " + " ~ ".join(['first_name|replace("", "xxxxxxxxxx")'] * n) + " }}"
    ),
    "plain text": lambda n: "x" * n,
}
# The longest name, of characters Python stores in 4 bytes each.
WORST_NAME = "\U0001d504" * MAX_VALUE_CHARS


@pytest.mark.parametrize("kind", list(WORST))
def test_the_worst_accepted_texts_render_within_the_memory_budget(
    templates: AdminTemplates, kind: str, report_line: Callable[[str], None]
) -> None:
    n = _largest_accepted(templates, WORST[kind])
    with pytest.raises(AdminTemplateError):  # one step further is refused
        templates.check(WORST[kind](n + 1))
    source = WORST[kind](n)
    tracemalloc.start()
    try:
        templates._outcomes.cache_clear()
        templates.check(source)  # parse, tree check, compile and the sample renders
        checked = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        out = templates.render(source, first_name=WORST_NAME)
        rendered = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    report_line(
        f"[sandbox] {kind}: source {len(source):,}, output {len(out):,} characters; "
        f"peak: check {checked:,} B, render {rendered:,} B"
    )
    assert out or kind == "hidden replacement"
    assert rendered < RENDER_MEMORY_BYTES
    assert checked < RENDER_MEMORY_BYTES
