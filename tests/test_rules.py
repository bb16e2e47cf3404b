"""What a part's body may link to and show: https or mailto links, images with alt text."""

from __future__ import annotations

import pytest

from newsletter.content.rules import body_problems, html_problems


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("[a](https://e.org/x) and [b](mailto:me@e.org)", None),
        ("![A chart of replies](https://e.org/c.png)", None),
        ("[a](http://e.org/x)", "link 'http://e.org/x' must be an https:// or mailto: URL"),
        ("[a](javascript:alert(1))", None),  # not a link to the renderer: shown as text
        ("[a](/relative/path)", "link '/relative/path' must be"),
        ("[a](mailto:nobody)", "link 'mailto:nobody' must be"),
        ("![](https://e.org/c.png)", "needs alt text"),
        ("![A chart](http://e.org/c.png)", "image 'http://e.org/c.png' must be an https:// URL"),
        ("* [nested](http://e.org/in-a-list)", "link 'http://e.org/in-a-list' must be"),
    ],
)
def test_body_links_and_images(body: str, problem: str | None) -> None:
    found = body_problems(body)
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0], found


@pytest.mark.parametrize(
    ("html", "problems"),
    [
        ('<a href="https://e.org/x">a</a> <a href="mailto:me@e.org">b</a>', []),
        ('<img src="https://e.org/c.png" alt="A chart">', []),
        ('<a href="http://e.org/x">a</a>', ["link 'http://e.org/x' must be an https"]),
        ('<a href="javascript:alert(1)">a</a>', ["link 'javascript:alert(1)' must be"]),
        ('<a href="HTTP://E.ORG">a</a><a href="/x">b</a>', ["link 'HTTP://E.ORG'", "link '/x'"]),
        ('<img src="https://e.org/c.png">', ["image 'https://e.org/c.png' needs alt text"]),
        ('<img src="https://e.org/c.png" alt=" ">', ["needs alt text"]),
        ('<img src="http://e.org/c.png" alt="A">', ["image 'http://e.org/c.png' must be an https"]),
        ("<p>[a](http://e.org) &lt;a href=&quot;http://e.org&quot;&gt;</p>", []),  # only text
    ],
)
def test_rendered_links_and_images(html: str, problems: list[str]) -> None:
    found = html_problems(html)
    assert len(found) == len(problems), found
    for expected, problem in zip(problems, found, strict=True):
        assert expected in problem


def test_the_products_own_pages_may_be_plain_http_on_this_machine() -> None:
    own = "http://127.0.0.1:5000"
    html = f'<a href="{own}/read/abc/1">View</a> <a href="http://127.0.0.1:50000/x">x</a>'
    assert html_problems(html, own_site=own) == [
        "link 'http://127.0.0.1:50000/x' must be an https:// or mailto: URL"
    ]
