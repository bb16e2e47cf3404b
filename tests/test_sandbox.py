"""Admin-written text: what a template can do, and everything it cannot."""

from __future__ import annotations

import itertools
import os

import pytest

from newsletter.mail import sandbox
from newsletter.mail.sandbox import AdminTemplateError, AdminTemplates


@pytest.fixture
def templates() -> AdminTemplates:
    return AdminTemplates()


def test_fields_and_conditions_work(templates: AdminTemplates) -> None:
    assert templates.render("Hi {{ first_name }}!", first_name="Ann") == "Hi Ann!"
    text = "{% if first_name %}Hi {{ first_name|title }}{% else %}Hello{% endif %}, welcome"
    assert templates.render(text, first_name="bo") == "Hi Bo, welcome"
    assert templates.render(text, first_name="") == "Hello, welcome"


@pytest.mark.parametrize(
    "source",
    [
        "{{ config }}",
        "{{ settings.secret_key }}",
        "{{ environ }}",
        "{{ self }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'].environ }}",
        "{{ range.__self__ }}",
        "{{ request }}",
    ],
)
def test_no_name_but_the_subscribers_fields(templates: AdminTemplates, source: str) -> None:
    # A bare name is unknown; a name with an attribute or an index is refused for that first.
    with pytest.raises(AdminTemplateError, match="unknown name|are not allowed"):
        templates.render(source, first_name="Ann")


@pytest.mark.parametrize(
    "source",
    [
        "{{ first_name.__class__ }}",
        "{{ first_name.__class__.__mro__[1].__subclasses__() }}",
        "{{ first_name.format.__globals__ }}",
        "{{ first_name|attr('__class__') }}",
        "{{ first_name.__init__.__globals__['os'] }}",
    ],
)
def test_python_internals_are_out_of_reach(templates: AdminTemplates, source: str) -> None:
    os.environ["NEWSLETTER_TEST_CANARY"] = "canary-7d1c"
    try:
        with pytest.raises(AdminTemplateError):
            out = templates.render(source, first_name="Ann")
            assert "canary" not in out  # reached only if no error: then it must leak nothing
            raise AssertionError(f"rendered {out!r}")
    finally:
        del os.environ["NEWSLETTER_TEST_CANARY"]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{% for i in range(10) %}x{% endfor %}", "loops"),
        ("{% macro m() %}x{% endmacro %}{{ m() }}", "macros"),
        ("{% include 'layouts/base.html' %}", "includes"),
        ("{% import 'x' as y %}", "imports"),
        ("{% extends 'layouts/base.html' %}", "extends"),
        ("{{ first_name", "syntax"),
    ],
)
def test_refused_when_checked(templates: AdminTemplates, source: str, reason: str) -> None:
    with pytest.raises(AdminTemplateError, match=reason):
        templates.check(source)


def test_size_caps(templates: AdminTemplates) -> None:
    with pytest.raises(AdminTemplateError, match="longer than"):
        templates.check("x" * (sandbox.MAX_SOURCE_CHARS + 1))
    with pytest.raises(AdminTemplateError, match="arithmetic"):
        templates.render("{{ 'x' * 100000000 }}", first_name="")
    with pytest.raises(AdminTemplateError, match="arithmetic"):
        templates.render("{{ 9 ** 9 ** 9 }}", first_name="")
    amplified = '{{ first_name|replace("", "' + "x" * 2000 + '") }}'  # short, builds much
    with pytest.raises(AdminTemplateError, match="could build .* characters"):
        templates.check(amplified)
    many = "{{ first_name }}" * 2000  # a short text, many parts to compile
    with pytest.raises(AdminTemplateError, match="more than 500 template parts"):
        templates.check(many)
    too_long = "y" * (sandbox.MAX_VALUE_CHARS + 1)
    with pytest.raises(AdminTemplateError, match="first_name is longer than 100"):
        templates.render("Hi {{ first_name }}", first_name=too_long)


def test_render_time_limit() -> None:
    ticks = itertools.count(step=0.2)  # every look at the clock: 0.2 s later
    templates = AdminTemplates(clock=lambda: next(ticks))
    assert templates.render("{{ first_name }}", first_name="a") == "a"
    slow = " ".join(["{{ first_name }}"] * 10)
    with pytest.raises(AdminTemplateError, match="took longer"):
        templates.render(slow, first_name="a")


def test_a_refusal_is_remembered_not_parsed_again(templates: AdminTemplates) -> None:
    hostile = "{{ first_name|center(999999999) }}" + "x" * 40_000
    for _ in range(3):  # as a stored step refused for each of its mails
        with pytest.raises(AdminTemplateError, match="center"):
            templates.render(hostile, first_name="Ann")
    info = templates._outcomes.cache_info()
    assert (info.misses, info.hits) == (1, 2)
